"""Migrations: upgrade from empty → downgrade → upgrade, and no drift from the models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection

from db.migrate import downgrade, upgrade
from db.models import Base, Profile
from db.session import make_engine, make_sessionmaker

TABLES = {
    "profiles",
    "tutor_threads",
    "runs",
    "deliveries",
    "thread_files",
    "channel_settings",
    "cleanups",
    "documents",
    "vector_stores",
    "library_requests",
    "slack_installations",
    "slack_bots",
    "slack_oauth_states",
    "usage_records",
    "channel_budgets",
    "feedback",
    "alembic_version",
}


def _drift(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _check_round_trip(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    await asyncio.to_thread(downgrade, url, "base")
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) <= {"alembic_version"}
        await asyncio.to_thread(upgrade, url)
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) >= TABLES
            assert await connection.run_sync(_drift) == []
        async with make_sessionmaker(engine)() as session:
            math = await session.scalar(select(Profile).where(Profile.slug == "math"))
            assert math is not None and math.name == "Math Tutor"
            assert math.instructions.startswith("You are a personal math tutor.")
            assert math.tools == ["code_interpreter"]
            data = await session.scalar(select(Profile).where(Profile.slug == "data"))
            assert data is not None and data.name == "Data Visualizer"
            assert data.instructions.startswith("You are great at creating beautiful data visualizations.")
    finally:
        await engine.dispose()


async def test_migrations_round_trip_on_sqlite(sqlite_url: str) -> None:
    await _check_round_trip(sqlite_url)


@pytest.mark.postgres
async def test_migrations_round_trip_on_postgres(postgres_url: str) -> None:
    await _check_round_trip(postgres_url)
