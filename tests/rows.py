"""Rows written straight into the tables, for tests of the queries and triggers that read them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from db.models import Delivery, Run, TutorThread, utcnow


async def new_thread(engine: AsyncEngine) -> int:
    async with engine.begin() as connection:
        return int(
            (
                await connection.execute(
                    insert(TutorThread)
                    .values(team_id="T1", channel_id="C1", thread_ts=uuid.uuid4().hex[:16], state="active")
                    .returning(TutorThread.id)
                )
            ).scalar_one()
        )


async def new_run(
    engine: AsyncEngine,
    thread_id: int,
    *,
    status: str = "queued",
    at: datetime | None = None,
    text: str = "What is 2 + 2?",
    delivered: bool = False,
) -> int:
    """A run of `thread_id` created `at` (now), finished then when `status` says it is over;
    `delivered`: with a done delivery row."""
    at = at or utcnow()
    async with engine.begin() as connection:
        run_id = int(
            (
                await connection.execute(
                    insert(Run)
                    .values(
                        run_uuid=str(uuid.uuid4()),
                        thread_id=thread_id,
                        team_id="T1",
                        channel_id="C1",
                        message_ts=uuid.uuid4().hex[:16],
                        user_id="U1",
                        text=text,
                        status=status,
                        next_attempt_at=at,
                        created_at=at,
                        finished_at=at if status in ("done", "failed") else None,
                    )
                    .returning(Run.id)
                )
            ).scalar_one()
        )
        if delivered:
            await connection.execute(
                insert(Delivery).values(run_id=run_id, key="text:0", state="done", created_at=at)
            )
    return run_id
