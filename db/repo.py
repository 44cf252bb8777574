"""Query functions. Keyword-only arguments; they never commit: the caller owns the transaction."""

from __future__ import annotations

import typing
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from slack_sdk.oauth.installation_store import Bot
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from sqlalchemy import (
    Integer,
    Table,
    Update,
    bindparam,
    case,
    cast,
    delete,
    distinct,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from db.leases import ACTIVE_STATUSES
from db.models import (
    Base,
    ChannelBudget,
    ChannelSettings,
    Cleanup,
    Delivery,
    Document,
    Feedback,
    LibraryRequest,
    Profile,
    Rating,
    Run,
    RunKind,
    RunStatus,
    ThreadFile,
    TutorThread,
    UsageRecord,
    VectorStore,
    slack_bots,
    slack_installations,
    utcnow,
)


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


_THREADS = typing.cast(Table, TutorThread.__table__)
_RUNS = typing.cast(Table, Run.__table__)
_THREAD_FILES = typing.cast(Table, ThreadFile.__table__)
_DELIVERIES = typing.cast(Table, Delivery.__table__)

# The reads every question makes are built once, with bound parameters: building a statement and
# its cache key cost as much CPU as running it (`_set`).
_PROFILE_BY_SLUG = select(Profile).where(Profile.slug == bindparam("slug"))
_CHANNEL_SETTINGS = select(ChannelSettings).where(
    ChannelSettings.team_id == bindparam("team_id"), ChannelSettings.channel_id == bindparam("channel_id")
)
_FILES_OF_THREAD = (
    select(ThreadFile).where(ThreadFile.thread_id == bindparam("thread_id")).order_by(ThreadFile.id)
)
_DELIVERY = select(Delivery).where(Delivery.run_id == bindparam("run_id"), Delivery.key == bindparam("key"))
_DOCUMENTS_IN_SCOPES = (
    select(Document)
    .where(Document.scope_key.in_(bindparam("scope_keys", expanding=True)))
    .order_by(Document.id)
)
_CHANNEL_BUDGET = select(ChannelBudget).where(
    ChannelBudget.team_id == bindparam("team_id"), ChannelBudget.channel_id == bindparam("channel_id")
)


async def get_profile(session: AsyncSession, *, slug: str) -> Profile | None:
    return await session.scalar(_PROFILE_BY_SLUG, {"slug": slug})


async def find_thread(
    session: AsyncSession, *, team_id: str, channel_id: str, thread_ts: str
) -> TutorThread | None:
    return await session.scalar(
        select(TutorThread).where(
            TutorThread.team_id == team_id,
            TutorThread.channel_id == channel_id,
            TutorThread.thread_ts == thread_ts,
        )
    )


ThreadKey = tuple[str, str, str]


@dataclass(frozen=True)
class ThreadRef:
    """What storing a question needs to know of a thread that exists."""

    id: int
    state: str


async def threads_by_key(session: AsyncSession, *, keys: Collection[ThreadKey]) -> dict[ThreadKey, ThreadRef]:
    """The tutor threads with these (team, channel, thread_ts) keys that exist.

    This, and the inserts of the questions' threads, runs and files, are Core statements: every
    acked question makes them, and the ORM's object loading and bulk inserts cost twice the CPU."""
    if not keys:
        return {}
    t = _THREADS.c
    rows = await session.execute(
        select(t.id, t.state, t.team_id, t.channel_id, t.thread_ts).where(
            tuple_(t.team_id, t.channel_id, t.thread_ts).in_(list(keys))
        )
    )
    return {(r.team_id, r.channel_id, r.thread_ts): ThreadRef(r.id, r.state) for r in rows}


async def create_threads(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Create threads that don't exist yet; concurrent creators of the same key are harmless."""
    if rows:
        await session.execute(
            _insert(session, _THREADS).on_conflict_do_nothing(
                index_elements=["team_id", "channel_id", "thread_ts"]
            ),
            list(rows),
        )


async def activate_threads(session: AsyncSession, *, ids: Collection[int]) -> None:
    if ids:
        await session.execute(
            update(TutorThread)
            .where(TutorThread.id.in_(list(ids)))
            .values(state="active")
            .execution_options(synchronize_session=False)
        )


async def insert_runs(
    session: AsyncSession, *, rows: Sequence[dict[str, Any]]
) -> dict[tuple[str, str, str], int]:
    """Insert question runs; return {(team, channel, message_ts): run id} of those that were new.

    The rows go as parameters of one statement (SQLAlchemy's "insertmanyvalues" batches them),
    never as literal VALUES: a statement per batch size would be compiled again for each."""
    if not rows:
        return {}
    result = await session.execute(
        _insert(session, _RUNS)
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "message_ts"])
        .returning(_RUNS.c.team_id, _RUNS.c.channel_id, _RUNS.c.message_ts, _RUNS.c.id),
        list(rows),
    )
    return {(team, channel, ts): run_id for team, channel, ts, run_id in result}


async def insert_thread_files(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Attach files to threads; a file already in that thread is not attached (or uploaded) twice."""
    if rows:
        await session.execute(
            _insert(session, _THREAD_FILES).on_conflict_do_nothing(
                index_elements=["thread_id", "slack_file_id"]
            ),
            list(rows),
        )


async def auto_channels(
    session: AsyncSession, *, channels: Collection[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Of these (team, channel) pairs, those that analyse shared files without asking."""
    if not channels:
        return set()
    rows = await session.execute(
        select(ChannelSettings.team_id, ChannelSettings.channel_id).where(
            tuple_(ChannelSettings.team_id, ChannelSettings.channel_id).in_(list(channels)),
            ChannelSettings.auto_analyse.is_(True),
        )
    )
    return {(team, channel) for team, channel in rows}


async def known_files(session: AsyncSession, *, files: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
    """Of these (team, Slack file id) pairs, those already offered or attached somewhere."""
    if not files:
        return set()
    rows = await session.execute(
        select(ThreadFile.team_id, ThreadFile.slack_file_id).where(
            tuple_(ThreadFile.team_id, ThreadFile.slack_file_id).in_(list(files))
        )
    )
    return {(team, file_id) for team, file_id in rows}


async def profile_ids(session: AsyncSession) -> dict[str, int]:
    return {slug: pid for slug, pid in await session.execute(select(Profile.slug, Profile.id))}


async def get_channel_settings(
    session: AsyncSession, *, team_id: str, channel_id: str
) -> ChannelSettings | None:
    return await session.scalar(_CHANNEL_SETTINGS, {"team_id": team_id, "channel_id": channel_id})


async def upsert_channel_settings(session: AsyncSession, *, team_id: str, channel_id: str) -> ChannelSettings:
    await session.execute(
        _insert(session, ChannelSettings)
        .values(team_id=team_id, channel_id=channel_id)
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id"])
    )
    settings = await get_channel_settings(session, team_id=team_id, channel_id=channel_id)
    assert settings is not None
    return settings


async def files_of_thread(session: AsyncSession, *, thread_id: int) -> Sequence[ThreadFile]:
    return (await session.scalars(_FILES_OF_THREAD, {"thread_id": thread_id})).all()


async def set_conversation_once(session: AsyncSession, *, thread_id: int, conversation_id: str) -> str:
    """Store the thread's conversation unless another worker got there first; return the winner."""
    await session.execute(
        update(TutorThread)
        .where(TutorThread.id == thread_id, TutorThread.conversation_id.is_(None))
        .values(conversation_id=conversation_id)
        .execution_options(synchronize_session=False)
    )
    winner = await session.scalar(select(TutorThread.conversation_id).where(TutorThread.id == thread_id))
    assert winner is not None
    return winner


async def get_delivery(session: AsyncSession, *, run_id: int, key: str) -> Delivery | None:
    return await session.scalar(_DELIVERY, {"run_id": run_id, "key": key})


async def uploaded_files_of_thread(
    session: AsyncSession, *, thread_id: int, keys: Collection[str]
) -> dict[str, str]:
    """Slack file ids of uploads finished by any run of the thread, by delivery key."""
    if not keys:
        return {}
    query = (
        select(Delivery.key, Delivery.slack_file_id)
        .join(Run, Run.id == Delivery.run_id)
        .where(
            Run.thread_id == thread_id,
            Delivery.key.in_(keys),
            Delivery.state == "done",
            Delivery.slack_file_id.is_not(None),
        )
        .order_by(Delivery.id)
    )
    return {row.key: row.slack_file_id for row in await session.execute(query) if row.slack_file_id}


async def start_delivery(session: AsyncSession, *, run_id: int, key: str) -> tuple[Delivery, bool]:
    """The delivery row for (run, key), and whether this call created it (False: an earlier
    attempt may already have reached Slack). A new row comes back from the insert itself."""
    statement = _START_DELIVERY.get(session.get_bind().dialect.name)
    if statement is None:
        statement = _START_DELIVERY[session.get_bind().dialect.name] = (
            _insert(session, _DELIVERIES)
            .values(run_id=bindparam("new_run_id"), key=bindparam("new_key"), state="pending")
            .values(attempted_at=bindparam("new_attempted_at", type_=_DELIVERIES.c.attempted_at.type))
            .on_conflict_do_nothing(index_elements=["run_id", "key"])
            .returning(*_DELIVERIES.c)
        )
    params = {"new_run_id": run_id, "new_key": key, "new_attempted_at": utcnow()}
    row = (await session.execute(statement, params)).one_or_none()
    if row is not None:
        return Delivery(**row._asdict()), True
    delivery = await get_delivery(session, run_id=run_id, key=key)
    assert delivery is not None
    return delivery, False


async def mark_delivery_attempted(session: AsyncSession, *, delivery_id: int, answered: bool = False) -> None:
    """Slack is about to be asked (again) to post or share it; `answered`: Slack answered that
    attempt (with an error), so nothing of it can still land."""
    value = None if answered else utcnow()
    await _set(session, Delivery, where={"id": delivery_id}, values={"attempted_at": value})


async def note_delivery_file(session: AsyncSession, *, delivery_id: int, file_id: str) -> None:
    """The Slack file an upload is creating, recorded before the step that can't be undone."""
    await _set(session, Delivery, where={"id": delivery_id}, values={"slack_file_id": file_id})


async def finish_delivery(
    session: AsyncSession, *, delivery_id: int, file_id: str | None = None, slack_ts: str | None = None
) -> None:
    """Done; a ts or file id not given keeps what the row has."""
    values: dict[str, Any] = {"state": "done"}
    if file_id:
        values["slack_file_id"] = file_id
    if slack_ts:
        values["slack_ts"] = slack_ts
    await _set(session, Delivery, where={"id": delivery_id}, values=values)


#: By dialect (the upsert is each dialect's own): built once.
_START_DELIVERY: dict[str, Any] = {}


async def forget_threads(session: AsyncSession, *, threads: Sequence[TutorThread]) -> int:
    """Reset threads: their next message starts a new conversation and sandbox. The OpenAI
    objects they held are queued for deletion. Returns how many threads had anything to forget."""
    forgotten = 0
    for thread in threads:
        files = await files_of_thread(session, thread_id=thread.id)
        objects = [("conversation", thread.conversation_id), ("container", thread.container_id)]
        objects += [("file", f.openai_file_id) for f in files]
        session.add_all(Cleanup(kind=kind, object_id=oid) for kind, oid in objects if oid)
        if thread.conversation_id or files:
            forgotten += 1
        for file in files:
            await session.delete(file)
        await forget_thread_documents(
            session, thread=thread, file_ids={f.openai_file_id for f in files if f.openai_file_id}
        )
        thread.conversation_id = None
        thread.container_id = None
    return forgotten


async def threads_in_channel(
    session: AsyncSession, *, team_id: str, channel_id: str
) -> Sequence[TutorThread]:
    query = select(TutorThread).where(TutorThread.team_id == team_id, TutorThread.channel_id == channel_id)
    return (await session.scalars(query)).all()


async def claim_cleanups(
    session: AsyncSession, *, now: datetime, retry_at: datetime, limit: int
) -> list[Cleanup]:
    """Due cleanups, pushed to `retry_at` so another worker leaves them alone meanwhile."""
    query = (
        select(Cleanup)
        .where(Cleanup.done_at.is_(None), Cleanup.next_attempt_at <= now)
        .order_by(Cleanup.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    due = list((await session.scalars(query)).all())
    for cleanup in due:
        cleanup.next_attempt_at = retry_at
        cleanup.attempts += 1
    return due


async def recent_threads_of_user(
    session: AsyncSession, *, team_id: str, user_id: str, limit: int
) -> Sequence[TutorThread]:
    """The user's tutor threads, most recently asked in first."""
    last = func.max(Run.created_at).label("last")
    query = (
        select(TutorThread)
        .join(Run, Run.thread_id == TutorThread.id)
        .where(Run.team_id == team_id, Run.user_id == user_id, Run.kind == "answer")
        .group_by(TutorThread.id)
        .order_by(last.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def all_profiles(session: AsyncSession) -> Sequence[Profile]:
    return (await session.scalars(select(Profile).order_by(Profile.id))).all()


async def count_ready_files(session: AsyncSession, *, team_id: str, channel_id: str) -> int:
    """Files the channel's tutor threads hold at OpenAI."""
    query = (
        select(func.count(ThreadFile.id))
        .join(TutorThread, TutorThread.id == ThreadFile.thread_id)
        .where(
            TutorThread.team_id == team_id, TutorThread.channel_id == channel_id, ThreadFile.status == "ready"
        )
    )
    return int(await session.scalar(query) or 0)


# Retention (bot.retention): batches of rows past the cut-off. Deleting a run deletes its delivery
# rows (ON DELETE CASCADE) and unlinks its files (SET NULL); SQLite runs with foreign_keys=ON.


async def prune_finished_runs(
    connection: AsyncSession | AsyncConnection, *, before: datetime, limit: int
) -> int:
    """Delete up to `limit` runs that finished before `before` (question text, payloads, deliveries).
    Their stored responses, and their turns in the thread's conversation, are queued for deletion
    at OpenAI first: once the row is gone, nothing would say where they are."""
    oldest = (
        select(Run.id, Run.response_id, Run.message_ts, Run.kind, TutorThread.conversation_id)
        .join(TutorThread, TutorThread.id == Run.thread_id)
        .where(Run.finished_at.is_not(None), Run.finished_at < before, Run.status.in_(("done", "failed")))
        .order_by(Run.finished_at)
        .limit(limit)
    )
    rows = (await connection.execute(oldest)).all()
    if not rows:
        return 0
    cleanups = [{"kind": "response", "object_id": row.response_id} for row in rows if row.response_id]
    cleanups += [
        {"kind": "turn", "object_id": f"{row.conversation_id}/{row.message_ts}"}
        for row in rows
        if row.kind == RunKind.ANSWER and row.conversation_id
    ]
    if cleanups:
        await connection.execute(insert(Cleanup), cleanups)
    result = await connection.execute(delete(Run).where(Run.id.in_([row.id for row in rows])))
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_finished_cleanups(
    connection: AsyncSession | AsyncConnection, *, before: datetime, limit: int
) -> int:
    """Delete up to `limit` clean-ups OpenAI confirmed before `before`."""
    oldest = (
        select(Cleanup.id)
        .where(Cleanup.done_at.is_not(None), Cleanup.done_at < before)
        .order_by(Cleanup.done_at)
        .limit(limit)
    )
    result = await connection.execute(delete(Cleanup).where(Cleanup.id.in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_usage_records(
    connection: AsyncSession | AsyncConnection, *, before: datetime, limit: int
) -> int:
    """Delete up to `limit` usage rows recorded before `before` (TUTOR_USAGE_RETENTION_DAYS)."""
    oldest = (
        select(UsageRecord.id).where(UsageRecord.created_at < before).order_by(UsageRecord.id).limit(limit)
    )
    result = await connection.execute(delete(UsageRecord).where(UsageRecord.id.in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)


async def prune_feedback(connection: AsyncSession | AsyncConnection, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` ratings last changed before `before` (TUTOR_RETENTION_DAYS): a comment
    is the person's own words, kept no longer than their questions."""
    oldest = select(Feedback.id).where(Feedback.updated_at < before).order_by(Feedback.id).limit(limit)
    result = await connection.execute(delete(Feedback).where(Feedback.id.in_(oldest.scalar_subquery())))
    return int(getattr(result, "rowcount", 0) or 0)


# Documents and the channel library (bot.documents, bot.library)


async def insert_documents(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Record documents; a Slack file already in that scope is not added (or uploaded) twice."""
    if rows:
        await session.execute(
            _insert(session, Document)
            .values(list(rows))
            .on_conflict_do_nothing(index_elements=["scope_key", "slack_file_id"])
        )


async def documents_in_scope(session: AsyncSession, *, scope_key: str) -> Sequence[Document]:
    return (await documents_in_scopes(session, scope_keys=[scope_key]))[scope_key]


async def documents_in_scopes(
    session: AsyncSession, *, scope_keys: Sequence[str]
) -> dict[str, list[Document]]:
    """`documents_in_scope` of each key, in one query (a question looks in its thread and channel)."""
    found: dict[str, list[Document]] = {key: [] for key in scope_keys}
    if scope_keys:
        for document in await session.scalars(_DOCUMENTS_IN_SCOPES, {"scope_keys": list(scope_keys)}):
            found[document.scope_key].append(document)
    return found


async def documents_by_ids(session: AsyncSession, *, ids: Collection[int]) -> Sequence[Document]:
    if not ids:
        return []
    query = select(Document).where(Document.id.in_(list(ids))).order_by(Document.id)
    return (await session.scalars(query)).all()


async def documents_of_run(session: AsyncSession, *, run_id: int) -> Sequence[Document]:
    query = select(Document).where(Document.run_id == run_id).order_by(Document.id)
    return (await session.scalars(query)).all()


async def documents_for_channel(
    session: AsyncSession, *, team_id: str, channel_id: str, thread_id: int
) -> Sequence[Document]:
    """The channel library's documents and this thread's own."""
    query = select(Document).where(
        Document.team_id == team_id,
        Document.channel_id == channel_id,
        (Document.scope == "channel") | (Document.thread_id == thread_id),
    )
    return (await session.scalars(query)).all()


async def get_vector_store(session: AsyncSession, *, scope_key: str) -> VectorStore | None:
    return await session.scalar(select(VectorStore).where(VectorStore.scope_key == scope_key))


async def set_vector_store_once(
    session: AsyncSession, *, scope_key: str, team_id: str, channel_id: str, openai_id: str
) -> str:
    """Store the scope's vector store unless another worker got there first; return the winner."""
    await session.execute(
        _insert(session, VectorStore)
        .values(scope_key=scope_key, team_id=team_id, channel_id=channel_id, openai_id=openai_id)
        .on_conflict_do_nothing(index_elements=["scope_key"])
    )
    winner = await get_vector_store(session, scope_key=scope_key)
    assert winner is not None
    return winner.openai_id


async def forget_documents(
    session: AsyncSession, *, documents: Sequence[Document], keep_files: Collection[str] = ()
) -> None:
    """Delete the rows and queue their OpenAI objects for deletion: the vector store file, and the
    Files API file unless it is in `keep_files` (deleted with the thread's files)."""
    for doc in documents:
        if doc.vector_store_id and doc.openai_file_id:
            ref = f"{doc.vector_store_id}/{doc.openai_file_id}"
            session.add(Cleanup(kind="vector_store_file", object_id=ref))
        if doc.openai_file_id and doc.openai_file_id not in keep_files:
            session.add(Cleanup(kind="file", object_id=doc.openai_file_id))
        await session.delete(doc)


async def forget_vector_store(session: AsyncSession, *, scope_key: str) -> None:
    store = await get_vector_store(session, scope_key=scope_key)
    if store is not None:
        session.add(Cleanup(kind="vector_store", object_id=store.openai_id))
        await session.delete(store)


async def forget_thread_documents(
    session: AsyncSession, *, thread: TutorThread, file_ids: Collection[str]
) -> None:
    """A reset thread's searched documents and vector store (the channel library stays)."""
    scope_key = f"thread:{thread.id}"
    await forget_documents(
        session, documents=await documents_in_scope(session, scope_key=scope_key), keep_files=file_ids
    )
    await forget_vector_store(session, scope_key=scope_key)


async def request_library_files(
    session: AsyncSession, *, team_id: str, channel_id: str, user_id: str, until: datetime
) -> None:
    """`/tutor library add`: this person's next file share in the channel goes to its library."""
    found = await session.scalar(
        select(LibraryRequest).where(
            LibraryRequest.team_id == team_id,
            LibraryRequest.channel_id == channel_id,
            LibraryRequest.user_id == user_id,
        )
    )
    if found is None:
        session.add(LibraryRequest(team_id=team_id, channel_id=channel_id, user_id=user_id, expires_at=until))
    else:
        found.expires_at = until


async def take_library_request(
    session: AsyncSession, *, team_id: str, channel_id: str, user_id: str, now: datetime
) -> bool:
    """Use up this person's pending `/tutor library add` here; False if there is none (or it expired)."""
    result = await session.execute(
        delete(LibraryRequest)
        .where(
            LibraryRequest.team_id == team_id,
            LibraryRequest.channel_id == channel_id,
            LibraryRequest.user_id == user_id,
        )
        .returning(LibraryRequest.expires_at)
    )
    return any(expires_at > now for (expires_at,) in result)


async def queue_cleanup(session: AsyncSession, *, kind: str, object_id: str) -> None:
    """An OpenAI object to delete in the clean-up loop (retried until OpenAI says it is gone)."""
    session.add(Cleanup(kind=kind, object_id=object_id))


# Run transitions. Each is checked against the lease: it changes the run only while `owner`
# holds it, says whether it did, and then mirrors the change on the `run` object. Those that end
# a step release the lease (the next step may be taken by any worker).


async def _leased(
    session: AsyncSession, run: Run, *, owner: str, release: bool, values: dict[str, object]
) -> bool:
    if release:
        values = {**values, "lease_owner": None, "lease_expires_at": None}
    where = {"id": run.id, "lease_owner": owner, "lease_generation": run.lease_generation}
    if await _set(session, Run, where=where, values=values) != 1:
        return False
    for key, value in values.items():
        setattr(run, key, value)
    return True


async def _set(
    session: AsyncSession, model: type[Base], *, where: dict[str, object], values: dict[str, object]
) -> int:
    """UPDATE `model` SET `values` WHERE each column of `where` equals its value; rows changed.

    The statement is built once per table and set of columns, with bound parameters: building
    an ORM update and its cache key for every run transition cost about four times executing a
    prebuilt one (740 against 180 µs of CPU), and a run makes several transitions per answer."""
    key = (model.__tablename__, tuple(sorted(where)), tuple(sorted(values)))
    statement = _SET_STATEMENTS.get(key)
    if statement is None:
        table = typing.cast(Table, model.__table__)
        statement = _SET_STATEMENTS[key] = (
            update(table)
            .where(*(table.c[name] == bindparam(f"old_{name}") for name in key[1]))
            .values({table.c[name]: bindparam(f"new_{name}", type_=table.c[name].type) for name in key[2]})
        )
    params = {f"old_{name}": value for name, value in where.items()}
    params.update({f"new_{name}": value for name, value in values.items()})
    result = await session.execute(statement, params)
    return int(getattr(result, "rowcount", 0))


_SET_STATEMENTS: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Update] = {}


async def note_status_shown(session: AsyncSession, run: Run, *, owner: str, at: datetime) -> bool:
    return await _leased(session, run, owner=owner, release=False, values={"status_shown_at": at})


async def mark_creating(
    session: AsyncSession, run: Run, *, owner: str, started_at: datetime, status_shown_at: datetime | None
) -> bool:
    """The intent, recorded before the create: from here a crash means "look for its answer".
    With it, when the thread's status was shown (in the same commit, not one of its own)."""
    values: dict[str, object] = {"status": RunStatus.CREATING, "create_started_at": started_at}
    if status_shown_at is not None:
        values["status_shown_at"] = status_shown_at
    return await _leased(session, run, owner=owner, release=False, values=values)


async def requeue(session: AsyncSession, run: Run, *, owner: str) -> bool:
    """The create was refused: no response exists, so it can be sent again."""
    return await _leased(session, run, owner=owner, release=False, values={"status": RunStatus.QUEUED})


async def mark_streaming(
    session: AsyncSession, run: Run, *, owner: str, response_id: str, stream_mode: str | None = None
) -> bool:
    """The response exists (its first event named it): from here it is resumed, never re-created.
    With `stream_mode`, the live answer's mode from here (in the same commit)."""
    values: dict[str, object] = {
        "status": RunStatus.STREAMING,
        "response_id": response_id,
        "attempts": 0,
        "failing_since": None,
    }
    if stream_mode is not None:
        values["stream_mode"] = stream_mode
    return await _leased(session, run, owner=owner, release=False, values=values)


async def save_stream(
    session: AsyncSession,
    run: Run,
    *,
    owner: str,
    seq: int | None,
    messages: list[str],
    mode: str | None,
    chars: int,
) -> bool:
    """Where the live answer is: after which event to resume, and which Slack messages it fills."""
    values: dict[str, object] = {
        "stream_seq": seq,
        "stream_messages": list(messages),
        "stream_mode": mode,
        "stream_chars": chars,
    }
    return await _leased(session, run, owner=owner, release=False, values=values)


async def mark_polling(
    session: AsyncSession, run: Run, *, owner: str, response_id: str, next_at: datetime
) -> bool:
    """Follow the response by polling (a create without a stream, or a stream that kept breaking)."""
    values: dict[str, object] = {
        "status": RunStatus.POLLING,
        "response_id": response_id,
        "attempts": 0,
        "failing_since": None,
        "next_attempt_at": next_at,
    }
    return await _leased(session, run, owner=owner, release=True, values=values)


async def poll_later(session: AsyncSession, run: Run, *, owner: str, next_at: datetime) -> bool:
    values: dict[str, object] = {"next_attempt_at": next_at}
    if run.attempts:
        values.update(attempts=0, failing_since=None)
    return await _leased(session, run, owner=owner, release=True, values=values)


async def mark_replying(session: AsyncSession, run: Run, *, owner: str) -> bool:
    """The response is over: its answer is delivered next (by this worker, lease kept)."""
    values: dict[str, object] = {"status": RunStatus.REPLYING, "attempts": 0, "failing_since": None}
    return await _leased(session, run, owner=owner, release=False, values=values)


async def fail_run(session: AsyncSession, run: Run, *, owner: str, code: str, message: str) -> bool:
    """The run failed: the sentence for `code` is delivered next, by any worker."""
    values: dict[str, object] = {
        "status": RunStatus.REPLYING,
        "attempts": 0,
        "failing_since": None,
        "error_code": code,
        "error_message": message,
        "next_attempt_at": utcnow(),
    }
    return await _leased(session, run, owner=owner, release=True, values=values)


async def finish_run(
    session: AsyncSession, run: Run, *, owner: str, failed: bool, code: str | None = None
) -> bool:
    values: dict[str, object] = {
        "status": RunStatus.FAILED if failed else RunStatus.DONE,
        "finished_at": utcnow(),
    }
    if code is not None:
        values["error_code"] = code
    return await _leased(session, run, owner=owner, release=True, values=values)


async def retry_later(
    session: AsyncSession,
    run: Run,
    *,
    owner: str,
    status: str,
    next_at: datetime,
    attempts: int,
    failing_since: datetime,
) -> bool:
    """The step failed in a way that can pass: try it again at `next_at`."""
    values: dict[str, object] = {
        "status": status,
        "next_attempt_at": next_at,
        "attempts": attempts,
        "failing_since": failing_since,
    }
    return await _leased(session, run, owner=owner, release=True, values=values)


async def finish_cleanup(session: AsyncSession, *, cleanup_id: int) -> None:
    await session.execute(
        update(Cleanup).where(Cleanup.id == cleanup_id).values(done_at=utcnow(), last_error=None)
    )


async def retry_cleanup(session: AsyncSession, *, cleanup_id: int, error: str, next_at: datetime) -> None:
    await session.execute(
        update(Cleanup).where(Cleanup.id == cleanup_id).values(last_error=error, next_attempt_at=next_at)
    )


async def run_by_uuid(session: AsyncSession, *, team_id: str, channel_id: str, run_uuid: str) -> Run | None:
    return await session.scalar(
        select(Run).where(Run.run_uuid == run_uuid, Run.team_id == team_id, Run.channel_id == channel_id)
    )


async def profile_or_default(session: AsyncSession, *, profile_id: int | None, default_slug: str) -> Profile:
    """That profile, or the default one."""
    profile = await session.get(Profile, profile_id) if profile_id else None
    profile = profile or await get_profile(session, slug=default_slug)
    if profile is None:
        raise RuntimeError("no tutor profile: run `slack-tutor migrate`")
    return profile


# Distribution mode: the installed workspaces (`bot.workspaces`). Rows are written by slack_sdk's
# installation store during the OAuth flow; these read them by workspace, rotate and delete them.


async def latest_bot(session: AsyncSession, *, client_id: str, team_id: str) -> tuple[int, Bot] | None:
    """The newest bot installation of a workspace (its row id, for `save_rotated_bot`), or None."""
    c = slack_bots.c
    row = (
        (
            await session.execute(
                select(slack_bots)
                .where(c.client_id == client_id, c.team_id == team_id, c.bot_token.is_not(None))
                .order_by(c.installed_at.desc(), c.id.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    return None if row is None else (int(row["id"]), SQLAlchemyInstallationStore.build_bot_entity(row))


async def save_rotated_bot(session: AsyncSession, *, row_id: int, bot: Bot) -> None:
    """The tokens oauth.v2.access (grant_type=refresh_token) gave in place of the expiring ones."""
    expires = bot.bot_token_expires_at
    await session.execute(
        update(slack_bots)
        .where(slack_bots.c.id == row_id)
        .values(
            bot_token=bot.bot_token,
            bot_refresh_token=bot.bot_refresh_token,
            bot_token_expires_at=None
            if expires is None
            else datetime.fromtimestamp(expires, UTC).replace(tzinfo=None),
        )
    )


async def delete_installations(session: AsyncSession, *, team_id: str) -> int:
    """Forget every installation and bot token of a workspace; returns how many bot rows went."""
    await session.execute(delete(slack_installations).where(slack_installations.c.team_id == team_id))
    result = await session.execute(delete(slack_bots).where(slack_bots.c.team_id == team_id))
    return int(getattr(result, "rowcount", 0) or 0)


async def installed_teams(session: AsyncSession, *, client_id: str) -> list[str]:
    """Every workspace with a bot token, newest install first."""
    c = slack_bots.c
    rows = await session.execute(
        select(c.team_id, func.max(c.installed_at))
        .where(c.client_id == client_id, c.bot_token.is_not(None), c.team_id.is_not(None))
        .group_by(c.team_id)
        .order_by(func.max(c.installed_at).desc())
    )
    return [str(team) for team, _ in rows.all()]


async def stop_workspace_runs(session: AsyncSession, *, team_id: str, code: str) -> int:
    """End every unfinished run of a workspace, now and without a word in Slack: the claim
    generation moves on, so a worker driving one fails its next fence (`leases.ensure_held`)."""
    result = await session.execute(
        update(Run)
        .where(Run.team_id == team_id, Run.status.in_(ACTIVE_STATUSES))
        .values(
            status=RunStatus.FAILED,
            error_code=code,
            finished_at=utcnow(),
            lease_owner=None,
            lease_expires_at=None,
            lease_generation=Run.lease_generation + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# Usage and budgets (bot.usage). A usage row holds counts, never content; it outlives its run.


@dataclass(frozen=True)
class UsageTotals:
    """Tokens summed over usage rows of one model (and, for `usage_by`, one channel or user)."""

    model: str
    answers: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    code_runs: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


async def record_usage(session: AsyncSession, *, row: dict[str, Any]) -> bool:
    """Store a run's usage unless it is stored already (keyed on run_uuid); True if this call did."""
    result = await session.execute(
        _insert(session, UsageRecord)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["run_uuid"])
        .returning(UsageRecord.id)
    )
    return result.scalar_one_or_none() is not None


_SUMS = (
    func.count(UsageRecord.id),
    func.coalesce(func.sum(UsageRecord.input_tokens), 0),
    func.coalesce(func.sum(UsageRecord.cached_tokens), 0),
    func.coalesce(func.sum(UsageRecord.output_tokens), 0),
    func.coalesce(func.sum(UsageRecord.reasoning_tokens), 0),
    func.coalesce(func.sum(cast(UsageRecord.code_interpreter, Integer)), 0),
)


def _totals(model: str, row: Sequence[Any]) -> UsageTotals:
    answers, input_tokens, cached, output, reasoning, code = (int(v or 0) for v in row)
    return UsageTotals(model, answers, input_tokens, cached, output, reasoning, code)


def _usage_filter(
    *, team_id: str, since: datetime, until: datetime | None, channel_id: str | None, user_id: str | None
) -> list[Any]:
    where = [UsageRecord.team_id == team_id, UsageRecord.created_at >= since]
    if until is not None:
        where.append(UsageRecord.created_at < until)
    if channel_id is not None:
        where.append(UsageRecord.channel_id == channel_id)
    if user_id is not None:
        where.append(UsageRecord.user_id == user_id)
    return where


async def usage_totals(
    session: AsyncSession,
    *,
    team_id: str,
    since: datetime,
    until: datetime | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
) -> list[UsageTotals]:
    """A workspace's usage from `since` (to `until`), per model; narrowed to a channel and/or user."""
    where = _usage_filter(team_id=team_id, since=since, until=until, channel_id=channel_id, user_id=user_id)
    query = select(UsageRecord.model, *_SUMS).where(*where).group_by(UsageRecord.model)
    return [_totals(model, rest) for model, *rest in await session.execute(query)]


async def tokens_used(
    session: AsyncSession,
    *,
    team_id: str,
    since: datetime,
    channel_id: str | None = None,
    user_id: str | None = None,
) -> int:
    """Input plus output tokens used from `since`: what a budget counts."""
    where = _usage_filter(team_id=team_id, since=since, until=None, channel_id=channel_id, user_id=user_id)
    total = func.coalesce(func.sum(UsageRecord.input_tokens + UsageRecord.output_tokens), 0)
    return int(await session.scalar(select(total).where(*where)) or 0)


async def usage_by(
    session: AsyncSession, *, team_id: str, since: datetime, by: Literal["channel", "user"]
) -> list[tuple[str, UsageTotals]]:
    """A workspace's usage from `since` per channel or per user (and model), largest first."""
    key = UsageRecord.channel_id if by == "channel" else UsageRecord.user_id
    total = func.sum(UsageRecord.input_tokens + UsageRecord.output_tokens)
    query = (
        select(key, UsageRecord.model, *_SUMS)
        .where(UsageRecord.team_id == team_id, UsageRecord.created_at >= since)
        .group_by(key, UsageRecord.model)
        .order_by(total.desc())
    )
    return [(name, _totals(model, rest)) for name, model, *rest in await session.execute(query)]


# Deletion: retention (bot.retention), `/tutor forget me` and uninstall (bot.privacy). Rows go with
# the OpenAI objects they point to queued in `cleanups`, in the same transaction.

#: Tables whose rows belong to one person of a workspace (columns team_id and user_id) and point to
#: nothing at OpenAI: `/tutor forget me` deletes the caller's rows, uninstall the workspace's.
#: A new table of that kind (usage records, feedback) is one more entry here.
PER_USER_TABLES: tuple[type[Base], ...] = (LibraryRequest, UsageRecord, Feedback)
#: Tables with a team_id whose rows point to nothing at OpenAI: uninstall deletes the workspace's.
PER_TEAM_TABLES: tuple[type[Base], ...] = (*PER_USER_TABLES, ChannelSettings, ChannelBudget)


async def forget_runs(session: AsyncSession, *, runs: Sequence[Run], turns: bool) -> None:
    """Delete runs (question text, payloads, delivery rows) and queue their stored responses for
    deletion; with `turns`, also their turns in the thread's current conversation (when the rest of
    the conversation stays), and the files and documents they brought."""
    if not runs:
        return
    session.add_all(Cleanup(kind="response", object_id=r.response_id) for r in runs if r.response_id)
    ids = [r.id for r in runs]
    if turns:
        threads = {
            t.id: t
            for t in await session.scalars(
                select(TutorThread).where(TutorThread.id.in_({r.thread_id for r in runs}))
            )
        }
        session.add_all(
            Cleanup(kind="turn", object_id=f"{conversation}/{r.message_ts}")
            for r in runs
            if r.kind == RunKind.ANSWER and (conversation := threads[r.thread_id].conversation_id)
        )
        files = (await session.scalars(select(ThreadFile).where(ThreadFile.run_id.in_(ids)))).all()
        session.add_all(Cleanup(kind="file", object_id=f.openai_file_id) for f in files if f.openai_file_id)
        for file in files:
            await session.delete(file)
        documents = await session.scalars(
            select(Document).where(Document.run_id.in_(ids), Document.scope == "thread")
        )
        await forget_documents(
            session,
            documents=documents.all(),
            keep_files={f.openai_file_id for f in files if f.openai_file_id},
        )
    await session.flush()
    # Ratings of these answers go with them, whoever gave them (a comment may quote the answer).
    await session.execute(delete(Feedback).where(Feedback.run_uuid.in_([r.run_uuid for r in runs])))
    await session.execute(delete(Run).where(Run.id.in_(ids)).execution_options(synchronize_session=False))


async def runs_of_threads(session: AsyncSession, *, thread_ids: Collection[int]) -> Sequence[Run]:
    if not thread_ids:
        return []
    return (await session.scalars(select(Run).where(Run.thread_id.in_(list(thread_ids))))).all()


async def delete_threads(session: AsyncSession, *, threads: Sequence[TutorThread]) -> None:
    """Delete threads whose OpenAI objects and runs were forgotten already (`forget_threads`,
    `forget_runs`)."""
    await session.flush()
    if threads:
        await session.execute(
            delete(TutorThread)
            .where(TutorThread.id.in_([t.id for t in threads]))
            .execution_options(synchronize_session=False)
        )


async def expired_threads(session: AsyncSession, *, before: datetime, limit: int) -> Sequence[TutorThread]:
    """Up to `limit` tutor threads with nothing since `before` (no question asked, none still being
    answered) that still hold something: a conversation, a sandbox, runs, files or documents."""
    recent = exists().where(
        Run.thread_id == TutorThread.id,
        or_(Run.finished_at.is_(None), Run.finished_at >= before, Run.created_at >= before),
    )
    holds = or_(
        TutorThread.conversation_id.is_not(None),
        TutorThread.container_id.is_not(None),
        exists().where(Run.thread_id == TutorThread.id),
        exists().where(ThreadFile.thread_id == TutorThread.id),
        exists().where(Document.thread_id == TutorThread.id),
    )
    query = (
        select(TutorThread)
        .where(TutorThread.created_at < before, ~recent, holds)
        .order_by(TutorThread.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=TutorThread)
    return (await session.scalars(query)).all()


async def expire_threads(session: AsyncSession, *, before: datetime, limit: int) -> tuple[int, int]:
    """Retention of whole threads: forget up to `limit` threads idle since `before` as a reset does
    (conversation with its items, sandbox, files, documents), and delete their runs with their
    stored responses. The thread row stays, holding nothing: a follow-up there starts fresh.
    Returns (threads, runs)."""
    threads = await expired_threads(session, before=before, limit=limit)
    await forget_threads(session, threads=threads)
    runs = [r for r in await runs_of_threads(session, thread_ids=[t.id for t in threads]) if r.finished_at]
    await forget_runs(session, runs=runs, turns=False)
    return len(threads), len(runs)


async def runs_of_user(session: AsyncSession, *, team_id: str, user_id: str) -> Sequence[Run]:
    query = select(Run).where(Run.team_id == team_id, Run.user_id == user_id).order_by(Run.id)
    return (await session.scalars(query)).all()


async def askers_of_threads(session: AsyncSession, *, thread_ids: Collection[int]) -> dict[int, set[str]]:
    """Who asked in each of these threads (every run's user)."""
    if not thread_ids:
        return {}
    rows = await session.execute(
        select(Run.thread_id, Run.user_id).where(Run.thread_id.in_(list(thread_ids))).distinct()
    )
    askers: dict[int, set[str]] = {}
    for thread_id, user_id in rows:
        askers.setdefault(thread_id, set()).add(user_id)
    return askers


async def threads_by_ids(session: AsyncSession, *, ids: Collection[int]) -> Sequence[TutorThread]:
    if not ids:
        return []
    query = select(TutorThread).where(TutorThread.id.in_(list(ids))).order_by(TutorThread.id)
    return (await session.scalars(query)).all()


async def count_files(session: AsyncSession, *, thread_ids: Collection[int], run_ids: Collection[int]) -> int:
    """The Slack files held for these threads (all their files) and these runs (the files they
    brought), counted once however many of our rows (thread files, documents) hold one."""
    held: set[str] = set()
    for model in (ThreadFile, Document):
        query = select(model.slack_file_id).where(
            or_(model.thread_id.in_(list(thread_ids)), model.run_id.in_(list(run_ids)))
        )
        held.update(await session.scalars(query))
    return len(held)


async def threads_of_team(session: AsyncSession, *, team_id: str, limit: int) -> Sequence[TutorThread]:
    query = select(TutorThread).where(TutorThread.team_id == team_id).order_by(TutorThread.id).limit(limit)
    return (await session.scalars(query)).all()


async def unname_library_files(session: AsyncSession, *, team_id: str, user_id: str) -> int:
    """Library files this person added stay (the channel's course material) without their name."""
    result = await session.execute(
        update(Document)
        .where(Document.team_id == team_id, Document.scope == "channel", Document.added_by == user_id)
        .values(added_by="")
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def get_channel_budget(session: AsyncSession, *, team_id: str, channel_id: str) -> ChannelBudget | None:
    return await session.scalar(_CHANNEL_BUDGET, {"team_id": team_id, "channel_id": channel_id})


async def set_channel_budget(
    session: AsyncSession,
    *,
    team_id: str,
    channel_id: str,
    scope: Literal["user", "channel"],
    tokens: int | None,
) -> None:
    """Set (or with None remove) a channel's per-user or channel-wide daily limit."""
    await session.execute(
        _insert(session, ChannelBudget)
        .values(team_id=team_id, channel_id=channel_id, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id"])
    )
    column = "tokens_per_user" if scope == "user" else "tokens_per_channel"
    await session.execute(
        update(ChannelBudget)
        .where(ChannelBudget.team_id == team_id, ChannelBudget.channel_id == channel_id)
        .values({column: tokens, "updated_at": utcnow()})
        .execution_options(synchronize_session=False)
    )


async def forget_libraries(session: AsyncSession, *, team_id: str) -> int:
    """Uninstall: every channel library of the workspace, at OpenAI too; returns the files."""
    documents = (await session.scalars(select(Document).where(Document.team_id == team_id))).all()
    await forget_documents(session, documents=documents)
    stores = (await session.scalars(select(VectorStore).where(VectorStore.team_id == team_id))).all()
    for store in stores:
        session.add(Cleanup(kind="vector_store", object_id=store.openai_id))
        await session.delete(store)
    return len(documents)


async def delete_user_rows(session: AsyncSession, *, team_id: str, user_id: str) -> int:
    deleted = 0
    for table in PER_USER_TABLES:
        column = table.__table__.c
        result = await session.execute(
            delete(table).where(column.team_id == team_id, column.user_id == user_id)
        )
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


async def delete_team_rows(session: AsyncSession, *, team_id: str) -> None:
    for table in PER_TEAM_TABLES:
        await session.execute(delete(table).where(table.__table__.c.team_id == team_id))


# Feedback: one row per answer and person; the latest click wins.


@dataclass(frozen=True)
class FeedbackSummary:
    """Ratings given in a window: how many, how many said helpful, on how many answers."""

    ratings: int
    helpful: int
    answers: int

    @property
    def helpful_share(self) -> float | None:
        """helpful / ratings, or None when nothing was rated."""
        return self.helpful / self.ratings if self.ratings else None


async def record_feedback(
    session: AsyncSession,
    *,
    run_uuid: str,
    team_id: str,
    channel_id: str,
    user_id: str,
    rating: Rating,
    at: datetime,
) -> None:
    """This person's rating of that answer, replacing their earlier one; what they said was wrong
    goes with a changed rating (it was about the other one)."""
    row = _insert(session, Feedback).values(
        run_uuid=run_uuid,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        rating=rating,
        created_at=at,
        updated_at=at,
    )
    await session.execute(
        row.on_conflict_do_update(
            index_elements=["run_uuid", "user_id"],
            set_={
                "rating": row.excluded.rating,
                "updated_at": row.excluded.updated_at,
                "comment": case((Feedback.rating == row.excluded.rating, Feedback.comment), else_=None),
            },
        )
    )


async def set_feedback_comment(
    session: AsyncSession, *, run_uuid: str, team_id: str, user_id: str, comment: str | None, at: datetime
) -> bool:
    """What this person said was wrong with that answer (None: nothing); False if they never rated it."""
    result = await session.execute(
        update(Feedback)
        .where(Feedback.run_uuid == run_uuid, Feedback.team_id == team_id, Feedback.user_id == user_id)
        .values(comment=comment, updated_at=at)
    )
    return bool(getattr(result, "rowcount", 0))


async def feedback_summary(
    session: AsyncSession, *, team_id: str, channel_id: str | None = None, since: datetime
) -> FeedbackSummary:
    """The ratings of a workspace (or one of its channels) last given at or after `since`."""
    query = select(
        func.count(Feedback.id),
        func.count(case((Feedback.rating == Rating.HELPFUL, 1))),
        func.count(distinct(Feedback.run_uuid)),
    ).where(Feedback.team_id == team_id, Feedback.updated_at >= since)
    if channel_id is not None:
        query = query.where(Feedback.channel_id == channel_id)
    ratings, helpful, answers = (await session.execute(query)).one()
    return FeedbackSummary(ratings=int(ratings), helpful=int(helpful), answers=int(answers))
