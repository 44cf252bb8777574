"""`slack-tutor run | web | worker | migrate | manifest | doctor`: a thin shell over the library."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence

from bot import manifest as app_manifest
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
    _add_manifest_command(commands)
    return parser


def _add_manifest_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "print the Slack app manifest to paste into Create New App → From a manifest"
    command = commands.add_parser("manifest", help=text, description=text)
    where = command.add_mutually_exclusive_group()
    where.add_argument(
        "--url",
        type=_checked(app_manifest.events_url),
        metavar="https://HOST[/PATH]",
        help="the bot's public base URL; Slack is sent to <url>/slack/events (HTTP mode)",
    )
    where.add_argument(
        "--socket-mode",
        action="store_true",
        help="for a bot Slack can't reach (SLACK_APP_TOKEN): no Request URLs",
    )
    command.add_argument(
        "--name",
        type=_checked(app_manifest.app_name),
        default="slack-tutor",
        help=f"the app's name in Slack (at most {app_manifest.NAME_MAX} characters)",
    )
    command.add_argument(
        "--bot-name",
        type=_checked(app_manifest.bot_display_name),
        default="tutor",
        help=f"the bot user's display name (at most {app_manifest.BOT_NAME_MAX} characters)",
    )
    command.add_argument("--format", choices=("yaml", "json"), default="yaml", help="yaml (default) or json")
    command.set_defaults(handler=_manifest, manifest_parser=command)


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """An argparse `type` from a manifest check: its sentence becomes argparse's error (exit 2)."""

    def convert(value: str) -> str:
        try:
            return check(value)
        except app_manifest.ManifestError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _serve(*, web: bool, worker: bool, migrate: bool) -> int:
    # Settings first: a missing one is told without first importing the app (~3 s of imports).
    settings = load_settings()

    from bot.app import serve
    from bot.logs import setup_logging
    from db.migrate import upgrade

    setup_logging(settings)
    if migrate:
        upgrade(settings.database_url)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop(settings)) as runner:
        runner.run(serve(settings, with_web=web, with_worker=worker))
    return 0


def _loop(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the processes run on (TUTOR_EVENT_LOOP); None is asyncio's own."""
    if settings.tutor_event_loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed here: running on asyncio's own event loop")
        return None
    return uvloop.new_event_loop


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
    if args.url is None and not args.socket_mode:
        args.manifest_parser.error(
            "--url is required: the bot's public https:// address, which Slack sends events to "
            "(e.g. --url https://tutor.example.com); use --socket-mode instead if Slack can't reach the bot"
        )
    manifest = app_manifest.build(name=args.name, bot_name=args.bot_name, request_url=args.url)
    print(app_manifest.render(manifest, format=args.format), end="")
    return 0


def _doctor(_args: argparse.Namespace) -> int:
    from bot.doctor import run_checks

    return asyncio.run(run_checks())


if __name__ == "__main__":
    sys.exit(main())
