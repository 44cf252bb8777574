"""`slack-tutor doctor`: check each thing the bot depends on and say plainly what is wrong."""

from __future__ import annotations

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from bot.ai import OpenAIGateway
from bot.config import load_settings
from bot.errors import ConfigError, TutorError
from bot.slack_api import SlackGateway, make_web_client
from db.migrate import alembic_config
from db.session import make_engine


async def run_checks() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        _say(False, "configuration", str(exc))
        return 1
    _say(True, "configuration", "Socket Mode" if settings.socket_mode else "HTTP (signing secret set)")
    results = [
        await _check_database(settings.database_url),
        await _check_slack(settings.slack_bot_token.get_secret_value(), settings.slack_api_url),
        await _check_openai(
            settings.openai_api_key.get_secret_value(), settings.openai_base_url, settings.tutor_model
        ),
    ]
    return 0 if all(results) else 1


async def _check_database(url: str) -> bool:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            revision = await connection.run_sync(current)
    except Exception as exc:
        _say(False, "database", f"cannot connect ({type(exc).__name__}); check DATABASE_URL")
        return False
    finally:
        await engine.dispose()
    if revision != head:
        _say(
            False,
            "database",
            f"schema at {revision or 'nothing'}, code expects {head}: run `slack-tutor migrate`",
        )
        return False
    _say(True, "database", f"schema up to date ({head})")
    return True


async def _check_slack(token: str, base_url: str) -> bool:
    slack = SlackGateway(make_web_client(token, base_url))
    try:
        identity = await slack.auth_test()
    except TutorError as exc:
        _say(False, "slack", f"auth.test failed ({exc.detail}); check SLACK_BOT_TOKEN")
        return False
    finally:
        await slack.close()
    _say(True, "slack", f"bot {identity.get('user')} ({identity.get('user_id')}) in {identity.get('team')}")
    return True


async def _check_openai(api_key: str, base_url: str | None, model: str) -> bool:
    ai = OpenAIGateway(api_key=api_key, base_url=base_url, max_retries=0)
    try:
        await ai.check_model(model)
    except TutorError as exc:
        _say(False, "openai", f"{exc.detail}; check OPENAI_API_KEY and TUTOR_MODEL")
        return False
    finally:
        await ai.close()
    _say(True, "openai", f"key works, model {model} available")
    return True


def _say(ok: bool, what: str, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
