"""DATABASE_URL as operators are handed it works, and a database that can't be reached is one sentence."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.errors import ConfigError
from db.migrate import upgrade
from db.session import connection_problem, make_engine, normalize_url
from tests.conftest import CLEAN_ENV

CLI = str(Path(sys.executable).parent / "slack-tutor")
PASSWORD = "s3cr%t-pw"  # must never be printed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (a firewall that drops, a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def _forms(asyncpg_url: str) -> list[str]:
    rest = asyncpg_url.split("://", 1)[1]
    return [f"postgres://{rest}", f"postgresql://{rest}", f"postgresql+psycopg://{rest}?sslmode=disable"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example.com/tutor", "postgresql+asyncpg://u:p@db.example.com/tutor"),
        ("postgresql://u:p@db.example.com:6543/tutor", "postgresql+asyncpg://u:p@db.example.com:6543/tutor"),
        ("postgresql+psycopg://u:p@h/tutor", "postgresql+asyncpg://u:p@h/tutor"),
        ("postgresql+psycopg2://u:p@h/tutor", "postgresql+asyncpg://u:p@h/tutor"),
        ("postgresql+asyncpg://u:p@h/tutor", "postgresql+asyncpg://u:p@h/tutor"),
        # Heroku appends libpq's sslmode; asyncpg calls it ssl.
        ("postgres://u:p@h:5432/d?sslmode=require", "postgresql+asyncpg://u:p@h:5432/d?ssl=require"),
        ("postgresql://u:p@h/d?connect_timeout=5", "postgresql+asyncpg://u:p@h/d?timeout=5"),
        ("sqlite:///slack-tutor.db", "sqlite+aiosqlite:///slack-tutor.db"),
        ("sqlite:////var/lib/tutor/tutor.db", "sqlite+aiosqlite:////var/lib/tutor/tutor.db"),
        ("sqlite+aiosqlite:///slack-tutor.db", "sqlite+aiosqlite:///slack-tutor.db"),
    ],
)
def test_the_usual_url_forms_become_the_async_drivers(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == expected


def test_a_password_with_url_escapes_survives_normalisation() -> None:
    url = normalize_url("postgres://tutor:p%40ss%2Fw%25rd@db.example.com/tutor")
    assert url.password == "p@ss/w%rd"
    assert make_url(url.render_as_string(hide_password=False)).password == "p@ss/w%rd"


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ("postgres://u:p@h/d?sslrootcert=/etc/ca.pem", "sslrootcert"),
        ("postgres://u:p@h/d?sslmode=sometimes", "sslmode=sometimes"),
        ("postgres://u:p@h/d?connect_timeout=soon", "timeout=soon"),
        ("not a url", "DATABASE_URL"),
    ],
)
def test_what_asyncpg_cant_take_is_one_config_sentence(given: str, named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_engine(given)
    assert named in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.postgres
async def test_every_postgres_form_migrates_and_connects(postgres_url: str) -> None:
    postgres, postgresql, psycopg = _forms(postgres_url)
    await asyncio.to_thread(upgrade, postgres)
    await asyncio.to_thread(upgrade, postgresql)  # already at head: a no-op, but it connected
    for url in (postgres, postgresql, psycopg):
        engine = make_engine(url)
        try:
            async with engine.connect() as connection:
                assert await connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
        finally:
            await engine.dispose()


def test_a_plain_sqlite_url_migrates(tmp_path: Path) -> None:
    upgrade(f"sqlite:///{tmp_path / 'tutor.db'}")
    assert (tmp_path / "tutor.db").stat().st_size > 0


def _problem_of(url: str) -> str:
    with pytest.raises(ConfigError) as raised:
        upgrade(url)
    return str(raised.value)


def _one_sentence(problem: str, *, names: str) -> None:
    assert "\n" not in problem and "Traceback" not in problem
    assert names in problem
    assert PASSWORD not in problem and "s3cr" not in problem
    assert problem.endswith(".")


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_one_sentence() -> None:
    problem = _problem_of(f"postgres://postgres:{PASSWORD}@127.0.0.1:5432/no_such_tutor_db")
    _one_sentence(problem, names='127.0.0.1:5432 (database "no_such_tutor_db")')
    assert 'database "no_such_tutor_db" does not exist' in problem
    assert "DATABASE_URL" in problem


@pytest.mark.postgres
def test_an_unknown_user_is_one_sentence() -> None:
    problem = _problem_of(f"postgresql://nobody_here:{PASSWORD}@127.0.0.1:5432/test")
    _one_sentence(problem, names='127.0.0.1:5432 (database "test")')
    assert 'role "nobody_here" does not exist' in problem


def test_an_unknown_host_is_one_sentence() -> None:
    problem = _problem_of(f"postgres://tutor:{PASSWORD}@nonexistent.invalid:5432/tutor")
    _one_sentence(problem, names='nonexistent.invalid:5432 (database "tutor")')
    assert "DNS" in problem


def test_a_refused_port_is_one_sentence() -> None:
    port = _free_port()
    problem = _problem_of(f"postgres://tutor:{PASSWORD}@127.0.0.1:{port}/tutor")
    _one_sentence(problem, names=f'127.0.0.1:{port} (database "tutor")')
    assert "refused" in problem


def test_a_server_that_never_answers_is_one_sentence(silent_port: int) -> None:
    problem = _problem_of(f"postgres://tutor:{PASSWORD}@127.0.0.1:{silent_port}/tutor")
    _one_sentence(problem, names=f'127.0.0.1:{silent_port} (database "tutor")')
    assert "no answer in time" in problem


@pytest.mark.postgres
def test_ssl_required_of_a_server_without_it_is_one_sentence() -> None:
    problem = _problem_of("postgres://postgres@127.0.0.1:5432/test?sslmode=require")
    _one_sentence(problem, names='127.0.0.1:5432 (database "test")')
    assert "SSL" in problem


def test_a_wrong_password_is_named_without_the_password() -> None:
    # The test server trusts every local connection, so the refusal is built as asyncpg raises it.
    url = f"postgres://tutor:{PASSWORD}@db.example.com/tutor"
    try:
        raise asyncpg.InvalidPasswordError('password authentication failed for user "tutor"')
    except asyncpg.InvalidPasswordError as exc:
        problem = connection_problem(normalize_url(url), exc)
    assert problem is not None
    _one_sentence(problem, names='db.example.com:5432 (database "tutor")')
    assert 'password for user "tutor"' in problem


def test_a_sqlite_file_in_a_missing_directory_is_one_sentence(tmp_path: Path) -> None:
    problem = _problem_of(f"sqlite:///{tmp_path / 'missing' / 'tutor.db'}")
    assert "\n" not in problem
    assert str(tmp_path / "missing" / "tutor.db") in problem and "unable to open" in problem


def test_errors_that_are_not_about_connecting_are_left_alone() -> None:
    assert connection_problem(normalize_url("postgres://u@h/d"), ValueError("a bug")) is None


async def _cli(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        CLI, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.postgres
async def test_migrate_command_with_a_missing_database_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    url = f"postgres://postgres:{PASSWORD}@127.0.0.1:5432/no_such_tutor_db"
    code, out, err = await _cli("migrate", cwd=tmp_path, env={**CLEAN_ENV, "DATABASE_URL": url})
    assert code == 2
    assert err.count("\n") == 1, err
    assert err.startswith('Cannot connect to PostgreSQL at 127.0.0.1:5432 (database "no_such_tutor_db")')
    assert "Traceback" not in err + out and "s3cr" not in err + out


async def test_run_command_with_an_unreachable_database_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {
        **CLEAN_ENV,
        "DATABASE_URL": f"postgres://tutor:{PASSWORD}@127.0.0.1:{_free_port()}/tutor",
        "SLACK_BOT_TOKEN": "xoxb-1-unused",
        "SLACK_SIGNING_SECRET": "unused",
        "OPENAI_API_KEY": "sk-unused",
    }
    code, out, err = await _cli("run", cwd=tmp_path, env=env)
    assert code == 2
    assert err.count("\n") == 1, err
    assert "Cannot connect to PostgreSQL at 127.0.0.1:" in err and "refused" in err
    assert "Traceback" not in err + out and "s3cr" not in err + out


@pytest.mark.postgres
async def test_migrate_command_takes_a_heroku_url(tmp_path: Path, postgres_url: str) -> None:
    heroku = _forms(postgres_url)[0] + "?sslmode=prefer"
    code, _, err = await _cli("migrate", cwd=tmp_path, env={**CLEAN_ENV, "DATABASE_URL": heroku})
    assert code == 0, err
    engine = make_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    finally:
        await engine.dispose()


def _sqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive() and "_connection_worker_thread" in t.name]


async def test_a_connect_cancelled_at_shutdown_leaves_no_sqlite_thread_behind(tmp_path: Path) -> None:
    # A poller task cancelled while it opens a connection: aiosqlite stops its thread without waiting,
    # and a thread still running when the loop closes dies on "Event loop is closed" (the flaky
    # teardown of test_mentions). The cancelled connect must return only once that thread is done.
    engine = make_engine(f"sqlite:///{tmp_path / 'tutor.db'}")
    try:
        for _ in range(20):
            opening = asyncio.create_task(engine.connect().start())
            await asyncio.sleep(0)  # the connect is now waiting on aiosqlite's thread
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                connection = await opening
                await connection.close()  # it won the race and opened
            assert _sqlite_threads() == []
    finally:
        await engine.dispose()
