"""A fork server for the `python -m bot <command>` processes the multi-process tests start.

Each such process spent ~4 s of CPU importing openai, matplotlib, SQLAlchemy, Slack's SDK… before
doing anything, and these tests start several, often one after another while the clock runs
(tests/test_scale.py, tests/test_rescue.py). Here one "zygote" process per test process imports
them once; each bot process is a fork of it that sets up its own stdin/stdout/stderr, working
directory, environment and argv, then runs bot/__main__.py as `python -m bot` does. It is a process
of its own (its own pid, killed with SIGKILL, stopped with SIGSTOP, exit status reported), running
the same code from `bot.cli.main` on: only the interpreter start-up and the imports are shared.
The real start-up path is tested by the tests that exec `slack-tutor` (test_cli, test_deploy,
test_doctor, test_observability, test_edge_socket_mode…).

TESTS_EXEC_PROCESSES=1 in the environment of pytest makes `start_bot_process` exec a fresh
interpreter for every process instead (e.g. to rule the fork server out while debugging).

Run as `python -m tests.prefork`: requests (one JSON line each) on stdin, answers on stdout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Protocol

REPO = Path(__file__).resolve().parent.parent
EXEC = os.environ.get("TESTS_EXEC_PROCESSES", "") not in ("", "0")


class ProcessLike(Protocol):
    """What the tests use of asyncio.subprocess.Process; a ForkedProcess has the same."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


# ---- in the test process ----------------------------------------------------------------------


class ForkedProcess:
    """A child of the zygote, seen from the test process (returncode as asyncio's: -N for signal N)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = []

    def _exited(self, returncode: int) -> None:
        """From the reader thread."""
        with self._lock:
            self.returncode = returncode
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that test's loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future, returncode)

    async def wait(self) -> int:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            self._waiters.append((loop, future))
        return await future

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            # Exited but not yet reported: as good as gone (asyncio's Process doesn't raise either).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _resolve(future: asyncio.Future[int], returncode: int) -> None:
    if not future.done():
        future.set_result(returncode)


class Zygote:
    """The test process's end of the fork server: started on first use, stopped by close()."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._pending: dict[int, concurrent.futures.Future[ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._reader: threading.Thread | None = None

    def _start(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            with self._log_path.open("ab") as log:
                self._popen = subprocess.Popen(
                    [sys.executable, "-m", "tests.prefork"],
                    cwd=REPO,
                    env=_BASE_ENV,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
            self._reader = threading.Thread(target=self._read, args=(self._popen.stdout,), daemon=True)
            self._reader.start()
        return self._popen

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            message = json.loads(line)
            if "id" in message:
                child = ForkedProcess(message["pid"])
                self._children[child.pid] = child
                self._pending.pop(message["id"]).set_result(child)
            else:
                self._children.pop(message["pid"])._exited(message["returncode"])
        # The zygote is gone: no answer will come for what is still pending.
        failure = RuntimeError(f"the fork server exited; its log: {self._log_path}")
        for future in self._pending.values():
            future.set_exception(failure)

    async def spawn(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, stdout: Path | None, stderr: Path | None
    ) -> ForkedProcess:
        """A `python -m bot *argv` process; its output to the given files (None: /dev/null)."""
        request: dict[str, Any] = {
            "argv": argv,
            "env": env,
            "cwd": str(cwd),
            "stdout": str(stdout or os.devnull),
            "stderr": str(stderr or os.devnull),
        }
        future: concurrent.futures.Future[ForkedProcess] = concurrent.futures.Future()
        with self._lock:
            popen = self._start()
            self._next_id += 1
            request["id"] = self._next_id
            self._pending[self._next_id] = future
            assert popen.stdin is not None
            popen.stdin.write(json.dumps(request).encode() + b"\n")
            popen.stdin.flush()
        return await asyncio.wrap_future(future)

    async def start(
        self, argv: list[str], *, env: dict[str, str], cwd: Path, stdout: Path | None, stderr: Path | None
    ) -> ProcessLike:
        """`python -m bot *argv`: forked from the zygote, or exec'd with TESTS_EXEC_PROCESSES=1."""
        if not EXEC:
            return await self.spawn(argv, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
        with contextlib.ExitStack() as files:
            out, err = (
                files.enter_context(path.open("wb")) if path else asyncio.subprocess.DEVNULL
                for path in (stdout, stderr)
            )
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def close(self) -> None:
        """Closing its stdin stops the zygote, and it kills any child still running."""
        if self._popen is not None:
            assert self._popen.stdin is not None
            self._popen.stdin.close()
            self._popen.wait(timeout=30)
            if self._reader is not None:
                self._reader.join(timeout=10)
            assert self._popen.stdout is not None
            self._popen.stdout.close()


#: The environment the zygote starts with (the test process's, without any slack-tutor setting).
_BASE_ENV = {
    k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "TUTOR_", "DATABASE_"))
}


# ---- in the zygote ----------------------------------------------------------------------------

#: What `python -m bot run|web|worker` imports before it serves (bot.cli imports the app lazily).
PRELOAD = (
    "bot.cli",
    "bot.app",
    "bot.logs",
    "db.migrate",
    "alembic.command",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
)


def _preload() -> tuple[bytes, bytes]:
    """Import PRELOAD; what the imports wrote to stdout and stderr (each child writes it again, as
    a process that imported them itself would have)."""
    import importlib
    import tempfile

    captured: list[bytes] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            for module in PRELOAD:
                importlib.import_module(module)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, target in zip(saved, (1, 2), strict=True):
                os.dup2(fd, target)
                os.close(fd)
        for file in (out, err):
            file.seek(0)
            captured.append(file.read())
    return captured[0], captured[1]


def _serve() -> tuple[dict[str, Any], tuple[bytes, bytes]]:
    """Fork a child per request. Returns only in a child: its request, and the imports' output."""
    import select

    preamble = _preload()
    # The protocol on fds of its own; 0 and 1 point at /dev/null until a child points them elsewhere.
    requests, answers = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    pending = b""

    def answer(message: dict[str, Any]) -> None:
        os.write(answers, json.dumps(message).encode() + b"\n")

    def reap() -> None:
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            children.discard(pid)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            answer({"pid": pid, "returncode": code})

    while True:
        readable, _, _ = select.select([requests, wake_r], [], [])
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass
            reap()
        if requests not in readable:
            continue
        data = os.read(requests, 1 << 20)
        if not data:  # the test process is done (or gone): leave nothing running behind it
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            while children:
                pid, _ = os.waitpid(-1, 0)
                children.discard(pid)
            sys.exit(0)
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            assert threading.active_count() == 1, "fork only a single-threaded process"
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (requests, answers, wake_r, wake_w):
                    os.close(fd)
                return dict(request), preamble
            children.add(pid)
            answer({"id": request["id"], "pid": pid})


def _become(request: dict[str, Any], preamble: tuple[bytes, bytes]) -> None:
    """In a child: take the request's place and run bot/__main__.py as `python -m bot` would."""
    import runpy

    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    for target, output in zip((1, 2), preamble, strict=True):
        if output:
            os.write(target, output)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
    sys.argv = ["-m", *request["argv"]]  # runpy puts the module's path in argv[0]
    runpy.run_module("bot", run_name="__main__", alter_sys=True)  # exits with main()'s status


if __name__ == "__main__":
    _become(*_serve())
