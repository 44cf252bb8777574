"""Fixtures: fake Slack and OpenAI servers, a migrated database, and the real bot serving HTTP."""

from __future__ import annotations

import asyncio
import compileall
import concurrent.futures
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.fakes import FakeOpenAI, FakeSlack
from tests.prefork import Zygote
from tests.slack_payloads import FORM, SIGNING_SECRET, as_json, signed_headers

# The app is imported where it is used: this file is also loaded by the process that only starts
# the xdist workers, and importing the app (~4 s of CPU) there held up their start.
if TYPE_CHECKING:
    from bot.app import Components
    from bot.config import Settings
    from db.models import Run

PG_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the project's own modules once (uv compiles only the installed packages), so the
    `slack-tutor` processes the tests start don't each compile them again (~0.5 s a process where
    PYTHONDONTWRITEBYTECODE is set). Once, in the process that starts the xdist workers."""
    if not hasattr(session.config, "workerinput"):
        for package in ("bot", "db", "migrations"):
            compileall.compile_dir(REPO / package, quiet=1)


#: The modules with the longest tests (real processes, real outages, model "thinking" time), longest
#: first: they start first, and the last tests handed out to the workers are short ones, so `-n 2`
#: doesn't end with one worker finishing a long test alone.
SLOW_FIRST = (
    "test_scale.py",
    "test_db_outage.py",
    "test_pacing.py",
    "test_deploy.py",
    "test_live_answers.py",
    "test_cli.py",
    "test_rescue.py",
    "test_exactly_once.py",
    "test_db_urls.py",
    "test_hygiene_inbox.py",
    "test_doctor.py",
    "test_migrations.py",
    "test_resilience.py",
    "test_edge_socket_mode.py",
)

#: The tests of real bot processes killed, frozen or cut off at a chosen moment, against timers
#: (leases, "within 5 s"): one worker runs them one after another, as when they sat together in
#: the alphabetical order, so that two of them never starve each other of CPU on 2 cores. Node id
#: prefixes; a test renamed out of them is only scheduled like any other.
PROCESS_TESTS = (
    "tests/test_scale.py::",
    "tests/test_rescue.py::",
    "tests/test_db_outage.py::",
    "tests/test_handoff.py::test_a_question_stored_by_web_wakes_a_separate_worker_at_once",
    "tests/test_exactly_once.py::test_worker_killed_",
    "tests/test_live_answers.py::test_kill_9_mid_stream_",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n 2` (xdist's "load"): PROCESS_TESTS are one unit of work, sent first to one worker; every
    other test is a unit of its own, handed out in collection order (SLOW_FIRST) as a worker runs
    low. (`--dist loadgroup` would do this with xdist_group marks, but with pytest 9.2 it no longer
    groups anything: pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "processes" if nodeid.startswith(PROCESS_TESTS) else nodeid

    # LoadScopeScheduling queues the biggest unit first; the others keep the collection's order.
    return Scheduling(config, log)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """Starts `python -m bot …` processes as forks of one process that imported the app once
    (tests/prefork.py): each process saves ~4 s of CPU. Started on first use, one per test process."""
    server = Zygote(tmp_path_factory.getbasetemp() / "zygote.log")
    yield server
    server.close()


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as slack:
        yield slack


@pytest_asyncio.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


async def _postgres_reachable() -> bool:
    import asyncpg

    try:
        connection = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def _postgres_database_url(name: str) -> str:
    return PG_ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{name}"


@contextlib.asynccontextmanager
async def _fresh_postgres_database(template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a copy of `template`, if given), dropped afterwards."""
    import asyncpg

    if not await _postgres_reachable():
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"tutor_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    try:
        yield _postgres_database_url(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest_asyncio.fixture
async def postgres_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh PostgreSQL database, dropped afterwards: empty, or already at the migrations' head
    (a copy of `postgres_template`) for a test marked `migrated_postgres`, whose own `upgrade`
    then finds nothing to do."""
    migrated = request.node.get_closest_marker("migrated_postgres") is not None
    template = str(request.getfixturevalue("postgres_template")) if migrated else None
    async with _fresh_postgres_database(template=template) as url:
        yield url


def _in_a_thread(work: Callable[[], Any]) -> Any:
    """Run blocking work (Alembic, asyncio.run) away from any event loop of pytest-asyncio's."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(work).result()


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    """A PostgreSQL database migrated to head once per test process, which `postgres_url` copies
    (CREATE DATABASE … TEMPLATE) for the tests marked `migrated_postgres`: creating a database and
    migrating it cost ~1.3 s a test, the copy ~0.6 s. The migrations themselves still run from an
    empty database in the tests left unmarked (test_migrations, test_db_urls, test_deploy, and
    test_rescue's restarts, whose `slack-tutor run` migrates it)."""
    import asyncpg

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    if not _in_a_thread(lambda: asyncio.run(_postgres_reachable())):
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"tutor_template_{uuid.uuid4().hex[:12]}"
    _in_a_thread(lambda: asyncio.run(admin(f'CREATE DATABASE "{name}"')))
    try:
        from db.migrate import upgrade

        _in_a_thread(lambda: upgrade(_postgres_database_url(name)))
        yield name
    finally:
        _in_a_thread(lambda: asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))


#: The test's SQLite file, in its tmp_path.
SQLITE_FILE = "tutor.db"


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / SQLITE_FILE}"


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database migrated to head per test process, copied for each test that needs one:
    a migration run per test cost 0.2-0.5 s. The migrations themselves are tested from an empty
    database in tests/test_migrations.py, and `slack-tutor run` migrates its own in the process tests."""
    path = tmp_path_factory.mktemp("migrated") / SQLITE_FILE
    from db.migrate import upgrade

    upgrade(f"sqlite+aiosqlite:///{path}")
    # Every connection is closed: WAL was checkpointed into the file, which alone is the database.
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture
def database_url(sqlite_url: str, tmp_path: Path, migrated_sqlite: Path) -> str:
    """A SQLite database at the migrations' head, this test's own."""
    shutil.copyfile(migrated_sqlite, tmp_path / SQLITE_FILE)
    return sqlite_url


#: The parent's environment without any slack-tutor setting, for processes started by tests.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "TUTOR_", "DATABASE_"))
}


def process_env(slack: FakeSlack, openai: FakeOpenAI, **extra: str) -> dict[str, str]:
    """Environment for a `slack-tutor` process that talks to the fakes."""
    return {
        **CLEAN_ENV,
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "OPENAI_API_KEY": openai.api_key,
        "OPENAI_BASE_URL": openai.base_url,
        **extra,
    }


def make_settings(database_url: str, slack: FakeSlack, openai: FakeOpenAI, **overrides: Any) -> Settings:
    from bot.config import Settings

    values: dict[str, Any] = {
        "slack_bot_token": slack.bot_token,
        "slack_signing_secret": SIGNING_SECRET,
        "slack_api_url": slack.api_url,
        "openai_api_key": openai.api_key,
        "openai_base_url": openai.base_url,
        "database_url": database_url,
        # Runs a question starts are woken at once; the poll finds retries, cleanups and runs
        # whose lease ran out. Every poll is two transactions: at 0.05 s an idle bot took a third
        # of a CPU, which the test and the other tests' bots were waiting for.
        "tutor_poll_interval": 0.2,
        # A test bot prunes only when its test calls `Retention.prune`: a round of its own within a
        # minute of start deleted what tests had just backdated to prune (seen in the full suite).
        "tutor_retention_first_within": 86400.0,
        "tutor_lease_seconds": 5.0,
        # Slack's ~1 post/s per channel would make every test that answers a few questions in
        # one channel wait; tests/test_pacing.py turns it back on.
        "tutor_slack_channel_rate": 1000.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Bot:
    """The real app on 127.0.0.1, plus what it talks to."""

    url: str
    components: Components
    slack: FakeSlack
    openai: FakeOpenAI
    http: aiohttp.ClientSession
    runner: web.AppRunner | None = None

    async def stop(self) -> None:
        """Shut this bot down (as a restart's first half): its worker hands its runs back."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def post(self, body: str, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(
            f"{self.url}/slack/events", data=body.encode(), headers=headers
        ) as response:
            return response.status, await response.text()

    async def send(
        self, payload: dict[str, Any], *, retry_num: int | None = None, **header_args: Any
    ) -> tuple[int, str]:
        """POST a signed Events API payload, as Slack does (retries carry X-Slack-Retry-Num)."""
        body = as_json(payload)
        headers = signed_headers(body, **header_args)
        if retry_num is not None:
            headers.update({"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"})
        return await self.post(body, headers)

    async def send_form(self, body: str) -> tuple[int, str]:
        """POST a signed form body (slash command or interactivity payload)."""
        return await self.post(body, signed_headers(body, content_type=FORM))

    async def runs(self) -> list[Run]:
        from sqlalchemy import select

        from db.models import Run

        async with self.components.sessions() as session:
            return list((await session.scalars(select(Run).order_by(Run.id))).all())

    async def wait_runs_finished(self, count: int, within: float = 10.0) -> list[Run]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            runs = await self.runs()
            if len(runs) >= count and all(run.status in ("done", "failed") for run in runs):
                return runs
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"runs not finished in {within}s: {[(r.id, r.status) for r in runs]}")
            await asyncio.sleep(0.05)  # each look is a transaction, competing with the bot's


BotFactory = Callable[..., Awaitable[Bot]]


@pytest_asyncio.fixture
async def start_bot(
    database_url: str, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> AsyncIterator[BotFactory]:
    """Start the bot (HTTP + in-process run-poller unless with_worker=False) on a random port."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(*, with_worker: bool = True, url: str | None = None, **overrides: Any) -> Bot:
        settings = make_settings(url or database_url, fake_slack, fake_openai, **overrides)
        from bot.app import build, web_app

        components = build(settings)
        runner = web.AppRunner(web_app(components, with_worker=with_worker), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        http = aiohttp.ClientSession()
        sessions.append(http)
        return Bot(f"http://127.0.0.1:{port}", components, fake_slack, fake_openai, http, runner)

    yield start
    for http in sessions:
        await http.close()
    for runner in runners:
        await runner.cleanup()  # a second cleanup of a stopped bot does nothing


@pytest_asyncio.fixture
async def bot(start_bot: BotFactory) -> Bot:
    return await start_bot()
