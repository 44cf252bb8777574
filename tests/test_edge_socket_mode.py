"""Socket Mode as an operator meets it: real `python -m bot run` processes against the fake Slack
(forked from one that imported the app: tests/prefork.py).

Slack unreachable: /healthz answers 503 while the bot keeps trying, and SIGTERM/SIGINT stop it
promptly. A token Slack refuses: exit code 2 and one sentence. Connected: /healthz is 200.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import BotFactory, process_env
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.prefork import ProcessLike, Zygote
from tests.slack_payloads import envelope, mention


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start(zygote: Zygote, cwd: Path, env: dict[str, str]) -> ProcessLike:
    """`python -m bot run` (tests/prefork.py); its stderr in cwd/run.err."""
    return await zygote.start(["run"], cwd=cwd, env=env, stdout=None, stderr=cwd / "run.err")


async def _health(port: int) -> tuple[int, dict[str, Any]] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status, await response.json()
    except aiohttp.ClientError:
        return None


def _stderr(cwd: Path) -> str:
    return (cwd / "run.err").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_unreachable_slack_serves_503_and_stops_on_a_signal(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote, signum: signal.Signals
) -> None:
    port = _free_port()
    env = process_env(
        fake_slack,
        fake_openai,
        PORT=str(port),
        SLACK_APP_TOKEN=fake_slack.app_token,
        SLACK_API_URL=f"http://127.0.0.1:{_free_port()}/api/",  # nothing listens there
    )
    process = await _start(zygote, tmp_path, env)
    try:
        health = await wait_for(lambda: _health(port), timeout=30, message="/healthz never served")
        assert health == (503, {"ok": False, "database": "ok", "worker": True, "slack": "connecting"})
        process.send_signal(signum)
        await asyncio.wait_for(process.wait(), 10)
        assert process.returncode == 0
        logs = _stderr(tmp_path)
        assert "Traceback" not in logs
        assert "Socket Mode: connection attempt 1 failed" in logs
        assert fake_slack.app_token not in logs
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_refused_app_token_exits_2_with_one_sentence(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote
) -> None:
    env = process_env(fake_slack, fake_openai, PORT=str(_free_port()), SLACK_APP_TOKEN="xapp-wrong-token")
    process = await _start(zygote, tmp_path, env)
    try:
        await asyncio.wait_for(process.wait(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    logs = _stderr(tmp_path)
    assert process.returncode == 2, logs
    assert "Traceback" not in logs
    sentence = [line for line in logs.splitlines() if "SLACK_APP_TOKEN" in line]
    assert len(sentence) == 1, logs
    assert sentence[0].startswith("Slack refused SLACK_APP_TOKEN (invalid_auth)")
    assert "xapp-wrong-token" not in logs
    assert fake_slack.calls("apps.connections.open")


async def test_connected_process_is_healthy(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote
) -> None:
    port = _free_port()
    env = process_env(fake_slack, fake_openai, PORT=str(port), SLACK_APP_TOKEN=fake_slack.app_token)
    process = await _start(zygote, tmp_path, env)
    try:

        async def healthy() -> bool:
            return await _health(port) == (
                200,
                {"ok": True, "database": "ok", "worker": True, "slack": "connected"},
            )

        await wait_for(healthy, timeout=30, message="never healthy over Socket Mode")
        assert fake_slack.sockets
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)
        assert process.returncode == 0
        assert "Traceback" not in _stderr(tmp_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_healthz_is_503_until_socket_mode_connects(
    start_bot: BotFactory, fake_slack: FakeSlack
) -> None:
    fake_slack.delay_next("apps.connections.open", 1.5)
    bot = await start_bot(slack_app_token=fake_slack.app_token, slack_signing_secret=None)
    async with bot.http.get(f"{bot.url}/healthz") as response:
        assert response.status == 503
        assert (await response.json())["slack"] == "connecting"

    async def connected() -> bool:
        async with bot.http.get(f"{bot.url}/healthz") as response:
            return response.status == 200

    await wait_for(connected, timeout=15, message="/healthz never 200 after connecting")


def _envelope(envelope_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "accepts_response_payload": False,
        "retry_attempt": 0,
        "retry_reason": "",
        "payload": payload,
    }


async def test_a_malformed_envelope_is_acked_with_one_warning(
    start_bot: BotFactory, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    bot = await start_bot(slack_app_token=fake_slack.app_token, slack_signing_secret=None)
    await wait_for(lambda: fake_slack.sockets, message="never connected")
    caplog.clear()
    for number, payload in enumerate(
        (
            {**envelope({"type": "app_mention"}), "event": None},
            {**envelope({"type": "app_mention"}), "authorizations": "all"},
            {**mention("hi"), "event": {**mention("hi")["event"], "ts": {"a": 1}}},
        )
    ):
        await fake_slack.socket_send(_envelope(f"env-odd-{number}", payload))
        await wait_for(lambda n=number: {"envelope_id": f"env-odd-{n}"} in fake_slack.socket_acks)
    assert "Traceback" not in caplog.text
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 3
    assert await bot.runs() == []


async def test_a_question_that_cannot_be_stored_is_not_acked(
    start_bot: BotFactory, fake_slack: FakeSlack, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over Socket Mode too: unacknowledged, Slack delivers the envelope again."""
    await start_bot(
        slack_app_token=fake_slack.app_token,
        slack_signing_secret=None,
        url=f"sqlite+aiosqlite:///{tmp_path}/missing-dir/none.db",
        with_worker=False,
    )
    await wait_for(lambda: fake_slack.sockets, message="never connected")
    caplog.clear()
    await fake_slack.socket_send(_envelope("env-lost", mention("What is 6 * 7?")))
    await wait_for(lambda: any("not stored" in r.getMessage() for r in caplog.records))
    await fake_slack.socket_send(_envelope("env-ok", envelope({"type": "reaction_added", "user": "U0ALICE"})))
    await wait_for(lambda: {"envelope_id": "env-ok"} in fake_slack.socket_acks)
    assert {"envelope_id": "env-lost"} not in fake_slack.socket_acks
    assert "Traceback" not in caplog.text
