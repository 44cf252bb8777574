"""Apply Alembic migrations from code (`slack-tutor migrate`, and `run` at start-up)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from bot.errors import ConfigError
from db.session import connection_problem, normalize_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    """Alembic's config for `database_url`, in the async driver's form (migrations/env.py reads it)."""
    url = normalize_url(database_url).render_as_string(hide_password=False)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # "%" is ConfigParser's interpolation character; passwords may contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Blocking: call it outside the event loop (env.py runs its own).

    Raises ConfigError with one sentence when the database can't be reached.
    """
    config = alembic_config(database_url)
    try:
        command.upgrade(config, revision)
    except Exception as exc:
        problem = connection_problem(normalize_url(database_url), exc)
        if problem is None:
            raise
        raise ConfigError(problem) from None


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
