"""`slack-tutor doctor` says what is wrong in the operator's terms, writes nothing, and exits like `run`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import sys
from pathlib import Path
from unittest import mock

import pytest

from bot.cli import main
from db.migrate import upgrade
from tests.conftest import CLEAN_ENV, process_env
from tests.fakes import FakeOpenAI, FakeSlack
from tests.slack_payloads import SIGNING_SECRET

CLI = str(Path(sys.executable).parent / "slack-tutor")


async def _doctor(cwd: Path, env: dict[str, str], *, process: bool = False) -> tuple[int, str, str]:
    """Run `slack-tutor doctor` in `cwd` with exactly `env`: as its own process, or (four seconds
    cheaper, most of it importing) through the same `main` in a thread of this one."""
    if process:
        child = await asyncio.create_subprocess_exec(
            CLI, "doctor", cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode is not None
        return child.returncode, out.decode(), err.decode()
    stdout, stderr = io.StringIO(), io.StringIO()

    def doctor() -> int:
        with (
            mock.patch.dict(os.environ, env, clear=True),
            contextlib.chdir(cwd),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
        ):
            return main(["doctor"])

    code = await asyncio.wait_for(asyncio.to_thread(doctor), 60)
    return code, stdout.getvalue(), stderr.getvalue()


def _line(out: str, what: str) -> str:
    """The one line doctor printed about `what` ("slack", "openai", …)."""
    lines = [line for line in out.splitlines() if line[5:].startswith(f"{what}:")]
    assert len(lines) == 1, out
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def migrated(tmp_path: Path) -> Path:
    """A working directory whose default SQLite database is migrated."""
    await asyncio.to_thread(upgrade, f"sqlite:///{tmp_path / 'slack-tutor.db'}")
    return tmp_path


def _contents(directory: Path) -> dict[str, bytes]:
    """Every file in `directory` with its bytes: what doctor must leave as it was."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def _env_example_with_socket_mode() -> str:
    example = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    return example.replace("# SLACK_APP_TOKEN=", "SLACK_APP_TOKEN=")


def _secrets_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


async def test_all_good_is_ok_on_every_line_and_exit_0(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    code, out, err = await _doctor(migrated, process_env(fake_slack, fake_openai), process=True)
    assert code == 0, out
    assert err == ""
    for what in ("configuration", "database", "slack", "openai"):
        assert _line(out, what).startswith("ok   ")
    _secrets_absent(out, fake_slack.bot_token, fake_openai.api_key, SIGNING_SECRET)


async def test_nothing_configured_exits_2_like_run_and_creates_no_file(tmp_path: Path) -> None:
    code, out, err = await _doctor(tmp_path, CLEAN_ENV, process=True)
    assert code == 2
    assert "FAIL configuration" in out
    for name in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "OPENAI_API_KEY"):
        assert name in out
    database = _line(out, "database")
    assert "does not exist yet" in database and "slack-tutor migrate" in database
    assert err == ""
    assert _contents(tmp_path) == {}  # no slack-tutor.db, no -wal, no -shm


async def test_an_existing_sqlite_file_is_read_without_writing_to_it(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    before = _contents(migrated)
    code, out, _ = await _doctor(migrated, process_env(fake_slack, fake_openai))
    assert code == 0, out
    assert _contents(migrated) == before


async def test_an_unresolvable_slack_host_is_a_network_failure_not_a_token_one(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, SLACK_API_URL="http://nonexistent.invalid/api/")
    code, out, err = await _doctor(migrated, env, process=True)
    assert code == 1
    slack = _line(out, "slack")
    assert slack.startswith("FAIL") and "DNS" in slack and "nonexistent.invalid" in slack
    assert "SLACK_API_URL" in slack and "token was not checked" in slack
    assert "check SLACK_BOT_TOKEN" not in out
    assert _line(out, "openai").startswith("ok   ")
    assert err == ""


async def test_a_refused_slack_port_is_a_network_failure(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, SLACK_API_URL=f"http://127.0.0.1:{_free_port()}/api/")
    code, out, err = await _doctor(migrated, env)
    assert code == 1
    assert "connection was refused" in _line(out, "slack")
    assert err == ""


async def test_invalid_auth_blames_the_bot_token(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, SLACK_BOT_TOKEN="xoxb-wrong-token")
    code, out, err = await _doctor(migrated, env)
    assert code == 1
    slack = _line(out, "slack")
    assert "Slack refused SLACK_BOT_TOKEN (auth.test: invalid_auth)" in slack
    assert "OAuth & Permissions" in slack
    _secrets_absent(out + err, "xoxb-wrong-token")
    assert err == ""


async def test_missing_scope_is_named_as_a_scope_problem(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_slack.fail_next("auth.test", status=200, body={"ok": False, "error": "missing_scope"}, times=5)
    code, out, _ = await _doctor(migrated, process_env(fake_slack, fake_openai))
    assert code == 1
    assert "lacks a scope" in _line(out, "slack") and "missing_scope" in _line(out, "slack")


async def test_a_wrong_app_token_fails_socket_mode(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, SLACK_APP_TOKEN="xapp-1-wrong")
    code, out, err = await _doctor(migrated, env)
    assert code == 1
    assert "ok configuration: Socket Mode" not in out
    socket_mode = _line(out, "socket mode")
    assert socket_mode.startswith("FAIL")
    assert "Slack refused SLACK_APP_TOKEN (apps.connections.open: invalid_auth)" in socket_mode
    _secrets_absent(out + err, "xapp-1-wrong")
    assert err == ""


async def test_an_app_token_without_connections_write_says_so(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_slack.fail_next(
        "apps.connections.open", status=200, body={"ok": False, "error": "missing_scope"}, times=5
    )
    env = process_env(fake_slack, fake_openai, SLACK_APP_TOKEN=fake_slack.app_token)
    code, out, _ = await _doctor(migrated, env)
    assert code == 1
    assert "connections:write" in _line(out, "socket mode")


async def test_a_right_app_token_is_ok(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, SLACK_APP_TOKEN=fake_slack.app_token)
    code, out, _ = await _doctor(migrated, env)
    assert code == 0, out
    assert _line(out, "socket mode").startswith("ok   ")
    assert len(fake_slack.calls("apps.connections.open")) == 1


async def test_a_model_that_does_not_exist_is_named(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.known_models = {"gpt-6-luna"}
    env = process_env(fake_slack, fake_openai, TUTOR_MODEL="gpt-nope")
    code, out, err = await _doctor(migrated, env)
    assert code == 1
    openai = _line(out, "openai")
    assert "model gpt-nope is not available" in openai and "404" in openai and "TUTOR_MODEL" in openai
    assert err == ""  # the reason is on doctor's line, not a bare log line


async def test_a_wrong_openai_key_is_a_401_on_the_key(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, OPENAI_API_KEY="sk-wrong-key")
    code, out, err = await _doctor(migrated, env, process=True)
    assert code == 1
    assert "OpenAI refused OPENAI_API_KEY" in _line(out, "openai") and "401" in _line(out, "openai")
    _secrets_absent(out + err, "sk-wrong-key")
    assert err == ""


async def test_an_exhausted_quota_is_named(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.fail_next(
        "GET /v1/models",
        status=429,
        body={"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}},
    )
    code, out, _ = await _doctor(migrated, process_env(fake_slack, fake_openai))
    assert code == 1
    assert "out of credit" in _line(out, "openai")


async def test_an_unreachable_openai_is_a_network_failure(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    env = process_env(fake_slack, fake_openai, OPENAI_BASE_URL=f"http://127.0.0.1:{_free_port()}/v1")
    code, out, err = await _doctor(migrated, env)
    assert code == 1
    openai = _line(out, "openai")
    assert "cannot reach OpenAI" in openai and "refused" in openai and "OPENAI_BASE_URL" in openai
    assert err == ""


async def test_placeholders_from_env_example_fail_naming_the_variable(
    migrated: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    (migrated / ".env").write_text(_env_example_with_socket_mode())
    env = {**CLEAN_ENV, "SLACK_API_URL": fake_slack.api_url, "OPENAI_BASE_URL": fake_openai.base_url}
    code, out, err = await _doctor(migrated, env)
    assert code == 2
    for name in ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "OPENAI_API_KEY"):
        assert f"FAIL configuration: {name} is still the placeholder from .env.example" in out
    assert "ok   configuration" not in out
    assert fake_slack.requests == [] and fake_openai.requests == []  # nothing sent with a placeholder
    assert err == ""


async def test_an_unreachable_database_is_one_sentence(
    tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    port = _free_port()
    env = process_env(
        fake_slack, fake_openai, DATABASE_URL=f"postgres://tutor:pw-s3cret@127.0.0.1:{port}/tutor"
    )
    code, out, err = await _doctor(tmp_path, env, process=True)
    assert code == 1
    database = _line(out, "database")
    assert f'Cannot connect to PostgreSQL at 127.0.0.1:{port} (database "tutor")' in database
    assert "refused" in database
    _secrets_absent(out + err, "pw-s3cret")
    assert err == ""
