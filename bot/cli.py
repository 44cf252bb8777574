"""`slack-tutor run | web | worker | migrate | manifest | doctor`: a thin shell over the library."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from bot.config import DatabaseSettings, Settings, load_settings
from bot.errors import ConfigError

log = logging.getLogger("slack_tutor")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slack-tutor", description="An OpenAI tutor for Slack.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, handler, text in (
        ("run", _run, "migrate, then serve HTTP (or Socket Mode) and run the poller in one process"),
        ("web", _web, "serve only the Slack endpoint and /healthz"),
        ("worker", _worker, "run only the run-poller"),
        ("migrate", _migrate, "apply database migrations"),
        ("doctor", _doctor, "check configuration, database, Slack token and OpenAI key"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.set_defaults(handler=handler)
    manifest = commands.add_parser("manifest", help="print the Slack app manifest (YAML)")
    manifest.add_argument("--url", default="https://tutor.example.com", help="the app's public base URL")
    manifest.add_argument("--name", default="slack-tutor", help="the app's name in Slack")
    manifest.add_argument("--socket-mode", action="store_true", help="for Socket Mode (SLACK_APP_TOKEN)")
    manifest.set_defaults(handler=_manifest)
    return parser


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The HTTP clients log every request URL at INFO; that's noise, not news.
    for noisy in ("httpx", "httpx2", "openai", "slack_sdk", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _serve(*, web: bool, worker: bool, migrate: bool) -> int:
    from bot.app import serve
    from db.migrate import upgrade

    settings = load_settings()
    _setup_logging(settings)
    if migrate:
        upgrade(settings.database_url)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, with_web=web, with_worker=worker))
    return 0


def _run(_args: argparse.Namespace) -> int:
    return _serve(web=True, worker=True, migrate=True)


def _web(_args: argparse.Namespace) -> int:
    return _serve(web=True, worker=False, migrate=False)


def _worker(_args: argparse.Namespace) -> int:
    return _serve(web=False, worker=True, migrate=False)


def _migrate(_args: argparse.Namespace) -> int:
    from db.migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    upgrade(DatabaseSettings().database_url)
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from bot.manifest import manifest

    print(manifest(args.url, name=args.name, socket_mode=args.socket_mode), end="")
    return 0


def _doctor(_args: argparse.Namespace) -> int:
    from bot.doctor import run_checks

    return asyncio.run(run_checks())


if __name__ == "__main__":
    sys.exit(main())
