"""What an operator watches: JSON logs carrying the run and the thread, /metrics counting what a
mention does, /healthz naming what is unhealthy."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sqlite3
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from bot.logs import log_context, log_handler
from db.models import Run, utcnow
from tests.conftest import Bot, BotFactory, process_env
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.prefork import Zygote
from tests.slack_payloads import CHANNEL, SIGNING_SECRET, TEAM, as_json, mention, new_ts, signed_headers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(bot: Bot) -> Samples:
    async with bot.http.get(f"{bot.url}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def healthz(bot: Bot) -> tuple[int, dict[str, Any]]:
    async with bot.http.get(f"{bot.url}/healthz") as response:
        return response.status, await response.json()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """What LOG_FORMAT=json writes, from every logger, while the test runs."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# Logs


async def test_a_mentions_run_logs_json_lines_carrying_its_run_thread_and_response(
    bot: Bot, json_logs: io.StringIO
) -> None:
    ts = new_ts()
    assert (await bot.send(mention("What is 6 * 7?", ts=ts)))[0] == 200
    [run] = await bot.wait_runs_finished(1)
    lines = records(json_logs)  # each line is one JSON object, or this fails
    of_run = [line for line in lines if line.get("run_id") == run.id]
    assert of_run, lines
    assert all(line["channel"] == CHANNEL and line["thread_ts"] == ts for line in of_run)
    assert all(line["team"] == TEAM for line in of_run)
    answered = [line for line in of_run if line["message"] == f"run {run.id}: answered"]
    assert answered and answered[0]["response_id"] == run.response_id
    assert answered[0]["level"] == "INFO" and answered[0]["logger"] == "bot.poller"
    assert "timestamp" in answered[0]
    # The event's own lines (stored before the ack) carry where it came from, before any run id.
    queued = [line for line in lines if line["message"] == f"question {CHANNEL}/{ts} queued"]
    assert queued and queued[0]["channel"] == CHANNEL and queued[0]["thread_ts"] == ts
    text = json_logs.getvalue()
    for secret in (bot.slack.bot_token, bot.openai.api_key, SIGNING_SECRET):
        assert secret not in text


def test_an_exception_is_one_json_object_with_its_traceback(json_logs: io.StringIO) -> None:
    with log_context(run_id=7, channel=CHANNEL):
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("bot.test").exception("step failed")
    [line] = records(json_logs)
    assert line["message"] == "step failed" and line["run_id"] == 7 and line["channel"] == CHANNEL
    assert "Traceback" in line["exc_info"] and "ValueError: boom" in line["exc_info"]
    assert "thread_ts" not in line  # unknown fields are left out, not null


def test_text_lines_stay_readable_with_the_context_appended() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("bot.test.text")
    logger.addHandler(log_handler("text", stream))
    logger.propagate = False
    try:
        with log_context(run_id=3, thread_ts="1.2"):
            logger.warning("retry %d", 2)
        logger.warning("no context")
    finally:
        logger.handlers.clear()
        logger.propagate = True
    first, second = stream.getvalue().splitlines()
    assert first.endswith("WARNING bot.test.text: retry 2 [run_id=3 thread_ts=1.2]")
    assert second.endswith("WARNING bot.test.text: no context")


# Metrics


async def test_a_mention_moves_the_counters_on_metrics(bot: Bot) -> None:
    before = await scrape(bot)
    ts = new_ts()
    payload = mention("What is 6 * 7?", ts=ts)
    assert (await bot.send(payload))[0] == 200
    await bot.wait_runs_finished(1)
    assert (await bot.send(payload, retry_num=1))[0] == 200  # Slack's retry: acked, not stored again
    after = await scrape(bot)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("tutor_events_received_total", type="app_mention") == 2
    assert delta("tutor_events_acked_total", type="app_mention") == 2
    assert delta("tutor_events_stored_total", type="app_mention") == 1
    assert value(after, "tutor_runs", state="done") == 1
    assert value(after, "tutor_queue_depth") == 0
    assert value(after, "tutor_database_up") == 1
    assert delta("tutor_openai_calls_total", method="responses.create") == 1
    assert delta("tutor_openai_call_seconds_count", method="responses.create") == 1
    assert delta("tutor_slack_calls_total", method="chat.postMessage") == 1
    # The answer came on the create's own event stream: the response was never polled.
    assert delta("tutor_openai_calls_total", method="responses.retrieve") == 0
    assert delta("tutor_response_polls_total", status="completed") == 0
    assert value(after, "tutor_worker_active_runs") == 0
    assert 0 <= value(after, "tutor_worker_loop_age_seconds") < 5


async def test_failed_calls_are_counted_by_method_and_status(bot: Bot) -> None:
    bot.openai.fail_next("POST /v1/responses$", status=429, body={"error": {"message": "slow down"}})
    assert (await bot.send(mention("What is 6 * 7?")))[0] == 200
    await bot.wait_runs_finished(1, within=15)
    samples = await scrape(bot)
    assert value(samples, "tutor_openai_call_errors_total", method="responses.create", error="429") == 1
    assert value(samples, "tutor_openai_calls_total", method="responses.create") == 2  # then the retry


async def test_queued_questions_show_as_queue_depth_and_age(start_bot: BotFactory) -> None:
    web = await start_bot(with_worker=False)  # `slack-tutor web`: nobody answers
    for text in ("What is 1 + 1?", "What is 2 + 2?"):
        assert (await web.send(mention(text)))[0] == 200
    await asyncio.sleep(0.2)
    samples = await scrape(web)
    assert value(samples, "tutor_queue_depth") == 2
    assert value(samples, "tutor_runs", state="queued") == 2
    assert value(samples, "tutor_queue_oldest_age_seconds") >= 0.2
    assert ("tutor_worker_loop_age_seconds", frozenset()) not in samples  # no worker here


async def test_runs_of_a_stopped_worker_count_as_rescued(start_bot: BotFactory) -> None:
    web = await start_bot(with_worker=False)
    assert (await web.send(mention("What is 6 * 7?")))[0] == 200
    async with web.components.sessions.begin() as session:  # as a worker killed mid-step leaves it
        held_until = utcnow() + timedelta(minutes=5)
        await session.execute(update(Run).values(lease_owner="dead-host:1:abc", lease_expires_at=held_until))
    worker = await start_bot()
    await worker.wait_runs_finished(1)
    assert value(await scrape(worker), "tutor_runs_rescued_total", reason="restart") == 1


async def test_metrics_can_be_turned_off(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_metrics=False)
    async with bot.http.get(f"{bot.url}/metrics") as response:
        assert response.status == 404
    assert (await healthz(bot))[0] == 200


async def test_metrics_can_require_a_bearer_token(start_bot: BotFactory) -> None:
    bot = await start_bot(tutor_metrics_token="scrape-me")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-me"}):
        async with bot.http.get(f"{bot.url}/metrics", headers=headers) as response:
            assert response.status == 401, headers
            assert response.headers["WWW-Authenticate"] == "Bearer"
            body = await response.text()
            assert "tutor_" not in body and "scrape-me" not in body
    async with bot.http.get(f"{bot.url}/metrics", headers={"Authorization": "Bearer scrape-me"}) as response:
        assert response.status == 200
        assert "tutor_events_received_total" in await response.text()
    assert (await healthz(bot))[0] == 200  # the health check needs no token


async def test_metrics_are_not_served_on_the_slack_events_path(bot: Bot) -> None:
    for path in ("/slack/events", "/slack/events/metrics", "/slack/events?metrics"):
        async with bot.http.get(f"{bot.url}{path}") as response:
            assert response.status in (404, 405), path
            assert "tutor_" not in await response.text()


# Health


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_healthz_names_the_database_when_it_is_down(start_bot: BotFactory) -> None:
    bot = await start_bot(url=f"postgresql+asyncpg://tutor:pw@127.0.0.1:{_closed_port()}/tutor")
    started = asyncio.get_running_loop().time()
    status, body = await healthz(bot)
    assert status == 503
    assert body == {"ok": False, "database": "unreachable", "worker": True}
    samples = await scrape(bot)  # /metrics still answers, without the queue
    assert value(samples, "tutor_database_up") == 0
    assert ("tutor_queue_depth", frozenset()) not in samples
    assert asyncio.get_running_loop().time() - started < 5


async def test_healthz_names_the_worker_when_its_loop_stalls(
    start_bot: BotFactory, database_url: str
) -> None:
    bot = await start_bot(tutor_stall_seconds=1.0)
    assert await healthz(bot) == (200, {"ok": True, "database": "ok", "worker": True})
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(database_url, locked, release))
    holder.start()
    try:
        # The claim loop now waits for SQLite's write lock, and stops coming round.
        assert await asyncio.to_thread(locked.wait, 5)

        async def stalled() -> dict[str, Any] | None:
            status, body = await healthz(bot)
            return body if status == 503 and body["worker"] == "stalled" else None

        await wait_for(stalled, timeout=15, message="/healthz never said the worker stalled")
    finally:
        release.set()
        holder.join()
    await wait_for(lambda: _healthy(bot), timeout=15, message="/healthz not 200 after the lock went")


async def _healthy(bot: Bot) -> bool:
    return (await healthz(bot))[0] == 200


def _hold_write_lock(database_url: str, locked: threading.Event, release: threading.Event) -> None:
    connection = sqlite3.connect(database_url.removeprefix("sqlite+aiosqlite:///"), isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(30)
        connection.execute("ROLLBACK")
    finally:
        connection.close()


async def test_healthz_names_the_slack_identity_when_auth_test_never_answers(
    start_bot: BotFactory, fake_slack: FakeSlack
) -> None:
    fake_slack.fail_next("auth.test", status=200, body={"ok": False, "error": "invalid_auth"}, times=1000)
    bot = await start_bot(tutor_stall_seconds=0.5, with_worker=False)

    async def unresolved() -> dict[str, Any] | None:
        status, body = await healthz(bot)
        return body if status == 503 else None

    body = await wait_for(unresolved, timeout=10, message="/healthz never failed without an identity")
    assert body == {"ok": False, "database": "ok", "worker": False, "identity": "unresolved"}


# The worker process


async def test_a_worker_process_serves_healthz_and_metrics_but_no_slack_endpoint(
    tmp_path: Path, database_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote
) -> None:
    port = _closed_port()
    env = process_env(fake_slack, fake_openai, DATABASE_URL=database_url, PORT=str(port))
    # `python -m bot worker`, forked from a process that imported the app (tests/prefork.py)
    process = await zygote.start(
        ["worker"], cwd=tmp_path, env=env, stdout=None, stderr=tmp_path / "worker.err"
    )
    try:
        async with aiohttp.ClientSession() as http:
            health = await wait_for(lambda: _get(http, port, "/healthz"), timeout=30, message="no /healthz")
            status, body = health
            assert status == 200 and json.loads(body) == {"ok": True, "database": "ok", "worker": True}
            status, metrics = await _get(http, port, "/metrics") or (0, "")
            assert status == 200 and "tutor_worker_loop_age_seconds" in metrics
            async with http.post(f"http://127.0.0.1:{port}/slack/events", data=b"{}") as response:
                assert response.status == 404
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
    assert process.returncode == 0


async def _get(http: aiohttp.ClientSession, port: int, path: str) -> tuple[int, str] | None:
    try:
        async with http.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status, await response.text()
    except aiohttp.ClientError:
        return None


async def test_slack_tutor_run_with_log_format_json_writes_json_lines(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI, zygote: Zygote
) -> None:
    port = _closed_port()
    env = process_env(fake_slack, fake_openai, PORT=str(port), LOG_FORMAT="json")
    # `python -m bot run`, forked from a process that imported the app (tests/prefork.py)
    stderr = tmp_path / "run.err"
    process = await zygote.start(["run"], cwd=tmp_path, env=env, stdout=None, stderr=stderr)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_for(lambda: _get(http, port, "/healthz"), timeout=30, message="no /healthz")
            ts = new_ts()
            body = as_json(mention("What is 5 * 5?", ts=ts))
            url = f"http://127.0.0.1:{port}/slack/events"
            async with http.post(url, data=body.encode(), headers=signed_headers(body)) as response:
                assert response.status == 200
            await wait_for(lambda: fake_slack.messages(CHANNEL, ts), timeout=15, message="no answer")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)
    lines = [json.loads(line) for line in stderr.read_text().splitlines()]
    answered = [line for line in lines if line.get("run_id") and line["message"].endswith(": answered")]
    assert answered and answered[0]["thread_ts"] == ts and answered[0]["response_id"].startswith("resp_")
