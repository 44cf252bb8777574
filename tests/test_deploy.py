"""The three deployments (Dockerfile, compose.yaml, Procfile) checked as far as this machine allows.

No image can be built here (no registry), so the files are parsed and held to what README and the
code say, and the commands they run are run as plain processes with the venv's console script,
against the fake Slack and OpenAI servers.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from sqlalchemy.engine import make_url

from bot.cli import _parser
from bot.config import Settings
from db.migrate import MIGRATIONS
from tests.conftest import CLEAN_ENV, process_env
from tests.fakes import FakeOpenAI, FakeSlack, wait_for
from tests.slack_payloads import CHANNEL, as_json, mention, new_ts, signed_headers

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's bin: what PATH="/app/.venv/bin:$PATH" gives the image
DEV_TOOLS = {"pytest", "pytest-asyncio", "pytest-timeout", "mypy", "ruff", "types-pyyaml"}


def cli_subcommands() -> set[str]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("bot.cli has no sub-commands")


def console_scripts() -> set[str]:
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def assert_real_command(argv: list[str]) -> None:
    assert len(argv) >= 2, argv
    assert argv[0] in console_scripts(), f"{argv[0]!r} is not a console script of the project"
    assert argv[1] in cli_subcommands(), f"{argv[1]!r} is not a `slack-tutor` sub-command"


# ---- Dockerfile -------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.args("ENV"):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                values[key] = value
        return values


def dockerfile_stages(text: str) -> list[Stage]:
    """`FROM … AS …` stages with their instructions (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction, args = instruction.upper(), args.strip()
        if instruction == "FROM":
            words = args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages and instruction == "ARG":
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD (shell form is refused)."""
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((REPO / "Dockerfile").read_text())


def healthcheck_argv(stages: list[Stage]) -> list[str]:
    (check,) = stages[-1].args("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert "--timeout=" in options and command, check
    return exec_form(command)


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, bare) or fnmatch.fnmatch(path.split("/")[0], bare):
            verdict = not negate
    return verdict


def test_dockerfile_build_stage_syncs_the_lock_without_dev_tools(stages: list[Stage]) -> None:
    assert len(stages) == 2, "a build stage and a runtime stage"
    build, runtime = stages
    assert build.name and runtime.name, "both stages are named (FROM … AS …)"
    assert build.base == runtime.base, "the venv's interpreter symlinks need the same Python image"
    assert build.base.startswith("python:3.11-slim")

    uv_images = [a for a in build.args("COPY") if "astral-sh/uv" in a]
    assert len(uv_images) == 1
    assert re.search(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", uv_images[0]), "uv pinned to a release"

    env = build.env()
    assert env["UV_COMPILE_BYTECODE"] == "1"
    assert env["UV_LINK_MODE"] == "copy"
    syncs = [a for a in build.args("RUN") if "uv sync" in a]
    assert len(syncs) == 2, syncs
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync, sync
        assert "--no-editable" not in sync, "db/migrate.py finds migrations/ next to db/: keep it in /app"
    # Dependencies first (cached layer from the lock alone), then the project.
    assert "--no-install-project" in syncs[0] and "--no-install-project" not in syncs[1]
    order = [(name, args) for name, args in build.instructions if name in ("RUN", "COPY")]
    first_code_copy = next(i for i, (n, a) in enumerate(order) if n == "COPY" and "bot" in a.split())
    assert order.index(("RUN", syncs[0])) < first_code_copy < order.index(("RUN", syncs[1]))


def test_dockerfile_copies_what_the_app_needs_and_the_context_has_it(stages: list[Stage]) -> None:
    build = stages[0]
    sources: list[str] = []
    for args in build.args("COPY"):
        words = args.split()
        if any(w.startswith("--from") for w in words):
            continue
        sources += words[:-1]
    for args in build.args("RUN"):
        sources += re.findall(r"type=bind,source=([^,\s]+)", args)
    patterns = dockerignore()
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # Everything the installed project reads at run time: its packages, migrations (found relative
    # to db/migrate.py) and the README hatchling needs to build the project's metadata.
    needed = {"bot", "db", MIGRATIONS.relative_to(REPO).as_posix(), "README.md", "pyproject.toml", "uv.lock"}
    assert needed <= set(sources), needed - set(sources)


def test_dockerignore_keeps_secrets_local_state_and_the_host_venv_out() -> None:
    patterns = dockerignore()
    for path in (".env", ".env.production", "slack-tutor.db", "slack-tutor.db-wal", ".venv", ".git"):
        assert ignored(path, patterns), path
    assert not ignored(".env.example", patterns)


def test_dockerfile_runtime_stage_is_small_non_root_and_has_no_secrets(stages: list[Stage]) -> None:
    build, runtime = stages
    copies = runtime.args("COPY")
    assert copies, "the runtime stage copies the venv and code from the build stage"
    assert all(f"--from={build.name}" in c for c in copies), copies
    assert not any("astral-sh/uv" in c for c in copies), "no uv in the final image"
    for run in runtime.args("RUN"):
        assert not re.search(r"\b(apt-get|apt|pip)\s+install\b", run), f"build tools in the runtime: {run}"

    (user,) = runtime.args("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert any("useradd" in r and user in r for r in runtime.args("RUN")), "the user is created"

    env = runtime.env()
    venv = build.env()["UV_PROJECT_ENVIRONMENT"]
    assert env["PATH"].split(":")[0] == f"{venv}/bin"
    for stage in stages:
        for name in [*stage.env(), *(a.split("=")[0] for a in stage.args("ARG"))]:
            assert not re.search(r"TOKEN|SECRET|KEY|PASSWORD", name), f"{name} baked into the image"

    # SQLite for the single-container case lives on a volume the non-root user owns.
    database = make_url(env["DATABASE_URL"])
    assert database.drivername == "sqlite+aiosqlite"
    assert database.database is not None
    (volume,) = (v for args in runtime.args("VOLUME") for v in exec_form(args))
    assert Path(database.database).parent == Path(volume)
    assert any(re.search(rf"chown\s+{user}(:\w+)?\s+{volume}\b", r) for r in runtime.args("RUN"))

    (port,) = runtime.args("EXPOSE")
    assert int(port) == Settings.model_fields["port"].default == int(env["PORT"])


def test_dockerfile_healthcheck_and_default_command(stages: list[Stage]) -> None:
    runtime = stages[-1]
    argv = healthcheck_argv(stages)
    assert argv[0] == "python" and argv[1] == "-c", "slim has no curl: Python's urllib"
    assert "/healthz" in argv[2] and "PORT" in argv[2]
    (cmd,) = runtime.args("CMD")
    assert exec_form(cmd) == ["slack-tutor", "run"]  # exec form: the app is PID 1 and gets SIGTERM
    assert_real_command(exec_form(cmd))
    assert not runtime.args("ENTRYPOINT")


# ---- compose.yaml -----------------------------------------------------------------------------------


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}` / `${VAR:-default}` substitution, for the values the tests read."""
    if isinstance(value, str):
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] if m[2] is not None else ""), value
        )
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return dict(interpolate(loaded, {}))


def test_compose_runs_migrate_once_before_web_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "web", "worker"}

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "PostgreSQL's data is on a named volume"

    migrate = services["migrate"]
    assert migrate["command"] == ["slack-tutor", "migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no", "a one-shot: restarting it after exit 0 would loop"

    for name in ("web", "worker"):
        service = services[name]
        assert service["command"] == ["slack-tutor", name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
    for name in ("web", "worker"):  # both serve /healthz: the image's HEALTHCHECK applies
        assert "healthcheck" not in services[name], name
    assert services["web"]["ports"] == ["3000:3000"]

    for name in ("migrate", "web", "worker"):
        service = services[name]
        assert_real_command(service["command"])
        assert service["build"] == "." and (REPO / "Dockerfile").exists()
        assert service["env_file"][0]["path"] == ".env"
        env = service["environment"]
        assert env["PORT"] == str(Settings.model_fields["port"].default)
        url = make_url(env["DATABASE_URL"])
        assert url.drivername == "postgresql+asyncpg"
        pg_env = postgres["environment"]
        assert (url.host, url.port, url.username, url.password, url.database) == (
            "postgres",
            5432,
            pg_env["POSTGRES_USER"],
            pg_env["POSTGRES_PASSWORD"],
            pg_env["POSTGRES_DB"],
        )


def docker_compose() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, timeout=20, check=False)  # noqa: S603
        if probe.returncode == 0:
            return argv
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    argv = docker_compose()
    if argv is None:
        pytest.skip("neither the `docker compose` plugin nor docker-compose is installed here")
    result = subprocess.run(  # noqa: S603 - our own argv
        [*argv, "-f", str(REPO / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("PORT", "POSTGRES_PASSWORD", "PUBLISH_PORT")},
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["web"]["command"] == ["slack-tutor", "web"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


# ---- Procfile and the production dependency set -----------------------------------------------------


def test_procfile_runs_release_migrate_web_and_worker_with_the_installed_script() -> None:
    processes = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = shlex.split(command)
    assert processes == {
        "release": ["slack-tutor", "migrate"],
        "web": ["slack-tutor", "web"],
        "worker": ["slack-tutor", "worker"],
    }
    for argv in processes.values():
        # Heroku's buildpack runs `uv sync --locked --no-default-groups` into its Python and leaves
        # uv out of the slug: `uv run` would not exist at run time, the console script does.
        assert_real_command(argv)


def _locked_packages(*flags: str) -> set[str]:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    result = subprocess.run(  # noqa: S603 - our own argv
        [uv, "export", "--frozen", "--no-hashes", "--no-emit-project", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    return {
        re.split(r"[=<>; \[]", line.strip(), maxsplit=1)[0].lower()
        for line in result.stdout.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }


def test_production_installs_carry_no_dev_tools() -> None:
    everything = _locked_packages()
    production = _locked_packages("--no-dev")
    assert everything >= DEV_TOOLS, "the lock's dev group is what this test thinks it is"
    assert not production & DEV_TOOLS, production & DEV_TOOLS
    runtime = {"slack-bolt", "aiohttp", "openai", "sqlalchemy", "alembic", "aiosqlite", "asyncpg", "pyyaml"}
    assert runtime <= production
    # What Heroku installs (--no-default-groups) is the same set as the image's --no-dev.
    assert _locked_packages("--no-default-groups") == production


# ---- the commands, run as plain processes -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _script(argv: list[str]) -> list[str]:
    """`slack-tutor …` as the image's PATH resolves it: the venv's console script."""
    assert argv[0] == "slack-tutor"
    return [str(BIN / "slack-tutor"), *argv[1:]]


async def _exit_code(argv: list[str], *, env: dict[str, str], cwd: Path, within: float = 60) -> int:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), within)


@asynccontextmanager
async def running(
    argv: list[str], *, env: dict[str, str], cwd: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running command; on exit it is sent SIGTERM and must stop cleanly, without a traceback."""
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield process
        assert process.returncode is None, f"{argv[1:]} exited early with {process.returncode}"
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
        assert process.stderr is not None
        logs = (await process.stderr.read()).decode()
        assert process.returncode == 0, logs
        assert "Traceback" not in logs, logs
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _healthcheck(stages: list[Stage], port: int, cwd: Path) -> int:
    argv = healthcheck_argv(stages)
    assert argv[0] == "python"
    return await _exit_code(
        [sys.executable, *argv[1:]], env={**CLEAN_ENV, "PORT": str(port)}, cwd=cwd, within=15
    )


async def _healthy(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_image_commands_run_migrate_then_the_default_command_and_its_healthcheck(
    stages: list[Stage], tmp_path: Path, fake_slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    runtime = stages[-1]
    (volume,) = (v for args in runtime.args("VOLUME") for v in exec_form(args))
    data = tmp_path / volume.strip("/")  # the volume, as a directory of this machine
    data.mkdir()
    database_url = runtime.env()["DATABASE_URL"].replace(f"//{volume}/", f"//{data}/")
    port = _free_port()
    env = process_env(fake_slack, fake_openai, DATABASE_URL=database_url, PORT=str(port))
    workdir = tmp_path / "app"  # the image's WORKDIR holds no .env and is not written to
    workdir.mkdir()

    # What an operator runs first (compose's one-shot, Heroku's release); `run` then migrates again.
    assert await _exit_code(_script(["slack-tutor", "migrate"]), env=env, cwd=workdir) == 0
    assert await _healthcheck(stages, port, workdir) != 0, "healthy with nothing listening"

    (cmd,) = runtime.args("CMD")
    async with running(_script(exec_form(cmd)), env=env, cwd=workdir):
        await wait_for(lambda: _healthy(port), timeout=30, message="the default command never became healthy")
        assert await _healthcheck(stages, port, workdir) == 0
    assert await _healthcheck(stages, port, workdir) != 0, "healthy after the server stopped"
    assert {p.name for p in data.iterdir()} >= {"slack-tutor.db"}
    assert not any(workdir.iterdir()), "the process wrote into its working directory"


async def test_healthcheck_fails_when_healthz_says_503(stages: list[Stage], tmp_path: Path) -> None:
    async def unhealthy(_request: web.Request) -> web.Response:
        return web.json_response({"ok": False, "database": "unreachable"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", unhealthy)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        assert await _healthcheck(stages, port, tmp_path) != 0
    finally:
        await runner.cleanup()


@pytest.mark.postgres
async def test_compose_services_as_processes_on_postgres(
    compose: dict[str, Any],
    stages: list[Stage],
    postgres_url: str,
    tmp_path: Path,
    fake_slack: FakeSlack,
    fake_openai: FakeOpenAI,
) -> None:
    """migrate, then web and worker as separate processes on one PostgreSQL: a mention is answered."""
    services = compose["services"]
    compose_url = make_url(services["web"]["environment"]["DATABASE_URL"])
    assert make_url(postgres_url).drivername == compose_url.drivername  # the URL form compose uses works
    port = _free_port()
    env = process_env(fake_slack, fake_openai, DATABASE_URL=postgres_url, PORT=str(port))
    # Each service has its own container (and network namespace) in compose; here they share one
    # host, so the worker gets a port of its own.
    worker_env = {**env, "PORT": str(_free_port())}

    assert await _exit_code(_script(services["migrate"]["command"]), env=env, cwd=tmp_path) == 0
    async with (
        running(_script(services["web"]["command"]), env=env, cwd=tmp_path),
        running(_script(services["worker"]["command"]), env=worker_env, cwd=tmp_path),
    ):
        await wait_for(lambda: _healthy(port), timeout=30, message="`web` never became healthy")
        assert await _healthcheck(stages, port, tmp_path) == 0
        worker_port = int(worker_env["PORT"])
        await wait_for(lambda: _healthy(worker_port), timeout=30, message="`worker` never became healthy")
        assert await _healthcheck(stages, worker_port, tmp_path) == 0
        ts = new_ts()
        body = as_json(mention("What is 6 * 7?", ts=ts))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/slack/events", data=body.encode(), headers=signed_headers(body)
            ) as response,
        ):
            assert response.status == 200
        await wait_for(
            lambda: fake_slack.messages(CHANNEL, ts), timeout=20, message="the worker never answered"
        )


def test_dockerfile_parser_sees_stages_and_continuations() -> None:
    """The parser the checks above rely on, on a Dockerfile that breaks each rule."""
    bad = dockerfile_stages(
        "ARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\n"
        "# a comment\n"
        "RUN uv sync \\\n"
        "    --frozen\n"
        "FROM $BASE\n"
        "USER root\n"
        'CMD ["slack-tutor", "serve"]\n'
    )
    assert [(s.base, s.name) for s in bad] == [("python:3.11-slim", "build"), ("python:3.11-slim", None)]
    assert bad[0].args("RUN") == ["uv sync --frozen"]
    assert bad[1].args("USER") == ["root"]
    with pytest.raises(AssertionError):
        assert_real_command(exec_form(bad[1].args("CMD")[0]))
