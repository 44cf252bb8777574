"""Query functions. Keyword-only arguments; they never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, distinct, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from db.models import (
    ChannelSettings,
    Cleanup,
    Delivery,
    Document,
    Feedback,
    LibraryRequest,
    Profile,
    Rating,
    Run,
    RunStatus,
    ThreadFile,
    TutorThread,
    VectorStore,
    utcnow,
)


def _insert(session: AsyncSession, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


async def get_profile(session: AsyncSession, *, slug: str) -> Profile | None:
    return await session.scalar(select(Profile).where(Profile.slug == slug))


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


async def threads_by_key(
    session: AsyncSession, *, keys: Collection[ThreadKey]
) -> dict[ThreadKey, TutorThread]:
    """The tutor threads with these (team, channel, thread_ts) keys that exist."""
    if not keys:
        return {}
    found = await session.scalars(
        select(TutorThread).where(
            tuple_(TutorThread.team_id, TutorThread.channel_id, TutorThread.thread_ts).in_(list(keys))
        )
    )
    return {(t.team_id, t.channel_id, t.thread_ts): t for t in found}


async def create_threads(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Create threads that don't exist yet; concurrent creators of the same key are harmless."""
    if rows:
        await session.execute(
            _insert(session, TutorThread)
            .values(list(rows))
            .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "thread_ts"])
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
    """Insert question runs; return {(team, channel, message_ts): run id} of those that were new."""
    if not rows:
        return {}
    result = await session.execute(
        _insert(session, Run)
        .values(list(rows))
        .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "message_ts"])
        .returning(Run.team_id, Run.channel_id, Run.message_ts, Run.id)
    )
    return {(team, channel, ts): run_id for team, channel, ts, run_id in result}


async def insert_thread_files(session: AsyncSession, *, rows: Sequence[dict[str, Any]]) -> None:
    """Attach files to threads; a file already in that thread is not attached (or uploaded) twice."""
    if rows:
        await session.execute(
            _insert(session, ThreadFile)
            .values(list(rows))
            .on_conflict_do_nothing(index_elements=["thread_id", "slack_file_id"])
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
    return await session.scalar(
        select(ChannelSettings).where(
            ChannelSettings.team_id == team_id, ChannelSettings.channel_id == channel_id
        )
    )


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
    query = select(ThreadFile).where(ThreadFile.thread_id == thread_id).order_by(ThreadFile.id)
    return (await session.scalars(query)).all()


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
    return await session.scalar(select(Delivery).where(Delivery.run_id == run_id, Delivery.key == key))


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
    attempt may already have reached Slack)."""
    result = await session.execute(
        _insert(session, Delivery)
        .values(run_id=run_id, key=key, state="pending", attempted_at=utcnow())
        .on_conflict_do_nothing(index_elements=["run_id", "key"])
        .returning(Delivery.id)
    )
    created = result.scalar_one_or_none() is not None
    delivery = await get_delivery(session, run_id=run_id, key=key)
    assert delivery is not None
    return delivery, created


async def mark_delivery_attempted(session: AsyncSession, *, delivery_id: int, answered: bool = False) -> None:
    """Slack is about to be asked (again) to post or share it; `answered`: Slack answered that
    attempt (with an error), so nothing of it can still land."""
    value = None if answered else utcnow()
    await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(attempted_at=value))


async def note_delivery_file(session: AsyncSession, *, delivery_id: int, file_id: str) -> None:
    """The Slack file an upload is creating, recorded before the step that can't be undone."""
    await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(slack_file_id=file_id))


async def finish_delivery(
    session: AsyncSession, *, delivery_id: int, file_id: str | None = None, slack_ts: str | None = None
) -> None:
    values: dict[str, Any] = {"state": "done"}
    if file_id:
        values["slack_file_id"] = file_id
    if slack_ts:
        values["slack_ts"] = slack_ts
    await session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))


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
    """Delete up to `limit` runs that finished before `before` (question text, payloads, deliveries)."""
    oldest = (
        select(Run.id)
        .where(Run.finished_at.is_not(None), Run.finished_at < before, Run.status.in_(("done", "failed")))
        .order_by(Run.finished_at)
        .limit(limit)
    )
    result = await connection.execute(delete(Run).where(Run.id.in_(oldest.scalar_subquery())))
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
    query = select(Document).where(Document.scope_key == scope_key).order_by(Document.id)
    return (await session.scalars(query)).all()


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
    result = await session.execute(
        update(Run)
        .where(Run.id == run.id, Run.lease_owner == owner, Run.lease_generation == run.lease_generation)
        .values(values)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    for key, value in values.items():
        setattr(run, key, value)
    return True


async def note_status_shown(session: AsyncSession, run: Run, *, owner: str, at: datetime) -> bool:
    return await _leased(session, run, owner=owner, release=False, values={"status_shown_at": at})


async def mark_creating(session: AsyncSession, run: Run, *, owner: str, started_at: datetime) -> bool:
    """The intent, recorded before the create: from here a crash means "look for its answer"."""
    values: dict[str, object] = {"status": RunStatus.CREATING, "create_started_at": started_at}
    return await _leased(session, run, owner=owner, release=False, values=values)


async def requeue(session: AsyncSession, run: Run, *, owner: str) -> bool:
    """The create was refused: no response exists, so it can be sent again."""
    return await _leased(session, run, owner=owner, release=False, values={"status": RunStatus.QUEUED})


async def mark_streaming(session: AsyncSession, run: Run, *, owner: str, response_id: str) -> bool:
    """The response exists (its first event named it): from here it is resumed, never re-created."""
    values: dict[str, object] = {
        "status": RunStatus.STREAMING,
        "response_id": response_id,
        "attempts": 0,
        "failing_since": None,
    }
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
    insert = _insert(session, Feedback).values(
        run_uuid=run_uuid,
        team_id=team_id,
        channel_id=channel_id,
        user_id=user_id,
        rating=rating,
        created_at=at,
        updated_at=at,
    )
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=["run_uuid", "user_id"],
            set_={
                "rating": insert.excluded.rating,
                "updated_at": insert.excluded.updated_at,
                "comment": case((Feedback.rating == insert.excluded.rating, Feedback.comment), else_=None),
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
