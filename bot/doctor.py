"""`slack-tutor doctor`: check each thing the bot depends on and say plainly what is wrong.

Each line says what was checked and, when it failed, why in the operator's terms: the network
(DNS, refused, timeout), a refused credential, a missing scope, a model that isn't available, a
quota. Exit code: 2 when the configuration is incomplete (as for `run`), 1 when a check failed,
0 when all passed. Doctor writes nothing: an SQLite file is only ever opened read-only.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from pydantic import SecretStr
from sqlalchemy.engine import Connection

from bot import errors
from bot.ai import OpenAIGateway
from bot.config import WHERE_TO_GET, DatabaseSettings, Settings, load_settings
from bot.slack_api import SlackGateway, make_web_client, origin
from db import repo
from db.migrate import alembic_config
from db.session import (
    connection_problem,
    make_read_only_engine,
    make_sessionmaker,
    network_reason,
    normalize_url,
    sqlite_path,
)

#: `.env.example` holds `xoxb-...`, `xapp-...`, `sk-...` and `...`; no real token has an ellipsis.
PLACEHOLDER = re.compile(r"\.\.\.|…")
#: Where an operator finds each credential doctor checks.
WHERE = {
    **WHERE_TO_GET,
    "SLACK_APP_TOKEN": (
        "an App-Level Token (xapp-…, scope connections:write) under Basic Information in your Slack app"
    ),
}
#: Distribution mode: the newest installations whose tokens doctor tries (auth.test each).
INSTALLS_CHECKED = 5
INSTALL_PATH = "/slack/install"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"
#: Slack's answers when the token itself is refused.
SLACK_AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "no_permission"}
)


async def run_checks() -> int:
    with _own_lines_only():
        return await _run_checks()


async def _run_checks() -> int:
    try:
        settings = load_settings()
    except errors.ConfigError as exc:
        _say("FAIL", "configuration", str(exc))
        await _check_database(DatabaseSettings().database_url)
        return 2
    placeholders = _placeholders(settings)
    for name in placeholders:
        placeholder = f"{name} is still the placeholder from .env.example"
        _say("FAIL", "configuration", f"{placeholder}; set it to {WHERE[name]}")
    if not placeholders:
        mode = "Socket Mode (SLACK_APP_TOKEN set)" if settings.socket_mode else "HTTP (signing secret set)"
        if settings.distribution:
            mode += "; distribution mode (SLACK_CLIENT_ID and SLACK_CLIENT_SECRET, a token per workspace)"
        _say("ok", "configuration", f"every required setting is present; {mode}")
    results = [await _check_database(settings.database_url)]
    results += await _check_slack(settings, skip=placeholders)
    if "OPENAI_API_KEY" in placeholders:
        _say("skip", "openai", "not checked until OPENAI_API_KEY is set")
    else:
        results.append(await _check_openai(settings))
    if placeholders:
        return 2
    return 0 if all(results) else 1


def _placeholders(settings: Settings) -> list[str]:
    """The settings still holding `.env.example`'s placeholder (the signing secret only matters over HTTP)."""
    values: dict[str, SecretStr | None] = {
        "SLACK_BOT_TOKEN": settings.slack_bot_token,
        "SLACK_CLIENT_SECRET": settings.slack_client_secret,
        "SLACK_SIGNING_SECRET": None if settings.socket_mode else settings.slack_signing_secret,
        "SLACK_APP_TOKEN": settings.slack_app_token,
        "OPENAI_API_KEY": settings.openai_api_key,
    }
    return [
        name
        for name, value in values.items()
        if value is not None and PLACEHOLDER.search(value.get_secret_value())
    ]


async def _check_database(url: str) -> bool:
    try:
        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        path = sqlite_path(url)
    except errors.ConfigError as exc:
        _say("FAIL", "database", str(exc))
        return False
    if path is not None and not path.exists():
        missing = f"the SQLite file {path.resolve()} does not exist yet"
        _say("FAIL", "database", f"{missing}; `slack-tutor migrate` (or `run`) creates it")
        return False

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    engine = make_read_only_engine(url)
    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current)
    except Exception as exc:
        problem = connection_problem(normalize_url(url), exc)
        _say("FAIL", "database", problem or f"cannot read it ({type(exc).__name__}); check DATABASE_URL")
        return False
    finally:
        await engine.dispose()
    if revision != head:
        schema = f"schema at {revision or 'nothing'}, code expects {head}"
        _say("FAIL", "database", f"{schema}: run `slack-tutor migrate`")
        return False
    _say("ok", "database", f"schema up to date ({head})")
    return True


async def _check_slack(settings: Settings, *, skip: list[str]) -> list[bool]:
    credential = "SLACK_CLIENT_SECRET" if settings.distribution else "SLACK_BOT_TOKEN"
    if credential in skip:
        _say("skip", "slack", f"not checked until {credential} is set")
        return []
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    slack = SlackGateway(make_web_client(token, settings.slack_api_url))
    try:
        if settings.distribution:
            results = [await _check_installations(settings)]
        else:
            results = [await _check_bot_token(slack, settings.slack_api_url)]
        app_token = settings.slack_app_token
        if app_token is not None and "SLACK_APP_TOKEN" not in skip:
            app = app_token.get_secret_value()
            results.append(await _check_app_token(slack, app, settings.slack_api_url))
        return results
    finally:
        await slack.close()


async def _check_installations(settings: Settings) -> bool:
    """Distribution mode: how many workspaces installed the app, and auth.test with the tokens of
    the newest INSTALLS_CHECKED (read from the database only: doctor refreshes no token)."""
    assert settings.slack_client_id is not None
    engine = make_read_only_engine(settings.database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            teams = await repo.installed_teams(session, client_id=settings.slack_client_id)
            bots = [
                await repo.latest_bot(session, client_id=settings.slack_client_id, team_id=t) for t in teams
            ]
    except Exception as exc:
        _say(
            "FAIL",
            "slack",
            f"cannot read the installations ({type(exc).__name__}); run `slack-tutor migrate`",
        )
        return False
    finally:
        await engine.dispose()
    if not teams:
        _say(
            "ok", "slack", f"no workspace has installed the app yet; an admin installs it from {INSTALL_PATH}"
        )
        return True
    refused: list[str] = []
    for found in bots[:INSTALLS_CHECKED]:
        if found is None or not found[1].bot_token:
            continue
        slack = SlackGateway(make_web_client(found[1].bot_token, settings.slack_api_url))
        try:
            await slack.auth_test()
        except errors.SlackDeliveryFailed as exc:
            refused.append(f"{found[1].team_id} ({exc.detail})")
        finally:
            await slack.close()
    checked = min(len(teams), INSTALLS_CHECKED)
    summary = f"{len(teams)} workspaces installed; auth.test with {checked} of their tokens"
    if refused:
        _say("FAIL", "slack", f"{summary}: refused for {', '.join(refused)} (reinstall from {INSTALL_PATH})")
        return False
    _say("ok", "slack", f"{summary}: all accepted")
    return True


async def _check_bot_token(slack: SlackGateway, api_url: str) -> bool:
    try:
        identity = await slack.auth_test()
    except errors.SlackDeliveryFailed as exc:
        _say("FAIL", "slack", _slack_problem(exc, variable="SLACK_BOT_TOKEN", api_url=api_url))
        return False
    _say("ok", "slack", f"bot {identity.get('user')} ({identity.get('user_id')}) in {identity.get('team')}")
    return True


async def _check_app_token(slack: SlackGateway, app_token: str, api_url: str) -> bool:
    try:
        await slack.open_socket_connection(app_token)
    except errors.SlackDeliveryFailed as exc:
        _say("FAIL", "socket mode", _slack_problem(exc, variable="SLACK_APP_TOKEN", api_url=api_url))
        return False
    _say("ok", "socket mode", "SLACK_APP_TOKEN opens Socket Mode connections")
    return True


def _slack_problem(exc: errors.SlackDeliveryFailed, *, variable: str, api_url: str) -> str:
    """`exc.detail` is "<method>: <Slack error code or exception class name>"."""
    method, _, code = exc.detail.partition(": ")
    if code in SLACK_AUTH_ERRORS:
        return f"Slack refused {variable} ({method}: {code}); set it to {WHERE[variable]}"
    if code == "missing_scope":
        app_token = variable == "SLACK_APP_TOKEN"
        needed = "connections:write" if app_token else "the scopes in `slack-tutor manifest`"
        return f"{variable} lacks a scope {method} needs ({code}); give it {needed} and reinstall the app"
    if code == "not_allowed_token_type":
        kind = "an app-level token (xapp-…)" if variable == "SLACK_APP_TOKEN" else "a bot token (xoxb-…)"
        return f"{variable} is the wrong kind of token ({method}: {code}); it must be {kind}"
    if code == "ratelimited":
        return f"Slack is rate-limiting {method} ({code}); try again in a minute"
    network = network_reason(exc)
    if network is not None:
        return (
            f"cannot reach Slack at {origin(api_url)}: {network} ({code}); "
            "check the network, proxy and SLACK_API_URL (the token was not checked)"
        )
    return f"Slack answered {method} with an error ({code}); check SLACK_API_URL, or Slack's status"


async def _check_openai(settings: Settings) -> bool:
    model = settings.tutor_model
    ai = OpenAIGateway(
        api_key=settings.openai_api_key.get_secret_value(), base_url=settings.openai_base_url, max_retries=0
    )
    try:
        await ai.check_model(model)
    except errors.TutorError as exc:
        _say("FAIL", "openai", _openai_problem(exc, model=model, base_url=settings.openai_base_url))
        return False
    finally:
        await ai.close()
    _say("ok", "openai", f"key works, model {model} available")
    return True


def _openai_problem(exc: errors.TutorError, *, model: str, base_url: str | None) -> str:
    """`exc.detail` is "models.retrieve: <HTTP status> <OpenAI error code>" (bot.ai._translate)."""
    detail = exc.detail
    if isinstance(exc, errors.OpenAIUnavailable):
        network = network_reason(exc)
        if network is not None:
            return (
                f"cannot reach OpenAI at {base_url or OPENAI_DEFAULT_URL}: {network}; "
                "check the network, proxy and OPENAI_BASE_URL (the key was not checked)"
            )
        return f"OpenAI answered with a server error ({detail}); try again later, or check OpenAI's status"
    if isinstance(exc, errors.TutorMisconfigured):
        if " 403" in detail:
            return f"OPENAI_API_KEY may not use model {model} ({detail}); check the project's model access"
        return f"OpenAI refused OPENAI_API_KEY ({detail}); set it to {WHERE['OPENAI_API_KEY']}"
    if isinstance(exc, errors.ContextLost):
        return (
            f"model {model} is not available to this key ({detail}); "
            "set TUTOR_MODEL to a model your project can use (or check OPENAI_BASE_URL)"
        )
    if isinstance(exc, errors.QuotaExhausted):
        return f"the OpenAI account is out of credit ({detail}); add credit (Billing, platform.openai.com)"
    if isinstance(exc, errors.RateLimited):
        return f"OpenAI is rate-limiting this key ({detail}); try again in a minute"
    return f"OpenAI refused the check ({detail}); check OPENAI_API_KEY, TUTOR_MODEL and OPENAI_BASE_URL"


@contextlib.contextmanager
def _own_lines_only() -> Iterator[None]:
    """The gateways log each failure once; doctor's own lines already say it, so keep stderr clean."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


def _say(status: str, what: str, detail: str) -> None:
    print(f"{status:<4} {what}: {detail}")
