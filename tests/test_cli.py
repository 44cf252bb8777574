"""The operator's commands, run as real processes the way README says."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import process_env
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.slack_payloads import CHANNEL, SIGNING_SECRET, as_json, mention, new_ts, signed_headers

CLI = str(Path(sys.executable).parent / "slack-tutor")
BASE_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "TUTOR_", "DATABASE_"))
}


async def _run_cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_missing_settings_are_all_named_without_traceback(tmp_path: Path) -> None:
    code, out, err = await _run_cli("run", cwd=tmp_path, env=BASE_ENV)
    assert code == 2
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY"):
        assert name in err
    assert "Traceback" not in err + out
    assert not (tmp_path / "slack-tutor.db").exists()


async def test_settings_from_dotenv_and_socket_mode_needs_no_signing_secret(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=xoxb-from-dotenv\nSLACK_APP_TOKEN=xapp-1\n")
    code, _, err = await _run_cli("run", cwd=tmp_path, env=BASE_ENV)
    assert code == 2
    assert "OPENAI_API_KEY" in err
    assert "SLACK_BOT_TOKEN" not in err and "SLACK_SIGNING_SECRET" not in err
    assert "xoxb-from-dotenv" not in err


async def test_run_from_a_fresh_directory_answers_a_mention(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    port = _free_port()
    env = process_env(fake_slack, fake_openai, PORT=str(port))
    process = await asyncio.create_subprocess_exec(
        CLI, "run", cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, timeout=30, message="`slack-tutor run` never became healthy")
            assert (tmp_path / "slack-tutor.db").exists()  # the default SQLite database, migrated
            ts = new_ts()
            body = as_json(mention("What is 5 * 5?", ts=ts))
            async with http.post(
                f"http://127.0.0.1:{port}/slack/events", data=body.encode(), headers=signed_headers(body)
            ) as response:
                assert response.status == 200
            await wait_for(lambda: fake_slack.messages(CHANNEL, ts), timeout=15, message="no answer")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        assert process.returncode == 0
        assert process.stderr is not None
        logs = (await process.stderr.read()).decode()
        assert "Traceback" not in logs
        for secret in (fake_slack.bot_token, fake_openai.api_key, SIGNING_SECRET):
            assert secret not in logs
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
