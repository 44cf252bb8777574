"""Forgetting a person (`/tutor forget me`) or a workspace (uninstall), in the database and at OpenAI.

Both are database transactions only: the rows are deleted and the OpenAI objects they pointed to
are queued in `cleanups` in the same transaction, for the worker to delete within minutes (a 404
counts as gone; failures are retried with backoff). Nothing here calls OpenAI, so `/tutor forget
me` is answered within Slack's 3 seconds, and a forget is never half done in the database.

Whose is a thread that several people spoke in:
- A thread the caller started (its root message was their question), or where nobody else asked
  (their DM with the tutor), is deleted whole: its conversation with every item, sandbox, files,
  documents, every question in it (other people's too, whose turns build on the caller's) and
  the thread row. A message there later is answered only if it mentions the tutor, fresh.
- In anyone else's thread the caller's questions go: their rows, their stored responses, their
  turns in the conversation (the user message tagged with the question's Slack ts and the items
  of its answer after it) and the files and documents they brought. The rest of the conversation
  stays: the thread goes on with its memory, minus the caller's turns.
- Files the caller added to a channel library stay there: they are the channel's course material,
  which other people's answers rely on. Their name is removed from them; `/tutor library remove`
  deletes one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from db import repo
from db.models import Run, RunKind, TutorThread

log = logging.getLogger(__name__)

#: Threads a workspace's forget deletes per transaction.
THREAD_BATCH = 100


@dataclass(frozen=True)
class Forgotten:
    """What a forget deleted (OpenAI's copies are queued for deletion)."""

    #: The person's questions (a workspace's: all questions).
    questions: int = 0
    #: Threads deleted whole, with their conversations.
    threads: int = 0
    #: Other people's questions in those threads.
    others_questions: int = 0
    #: The person's questions taken out of other people's threads.
    turns: int = 0
    #: Files shared in the threads (Slack files, counted once).
    files: int = 0
    #: Library files: kept without the person's name (forget me), deleted (a workspace).
    library_files: int = 0
    #: Other rows about the person or workspace (pending library adds, and so on).
    other_rows: int = 0

    @property
    def nothing(self) -> bool:
        return not (self.questions or self.threads or self.files or self.library_files or self.other_rows)


class Privacy:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], wake: Callable[[], None]) -> None:
        self._sessions = sessions
        self._wake = wake

    async def forget_user(self, *, team_id: str, user_id: str) -> Forgotten:
        """`/tutor forget me`: everything the tutor keeps about this person in this workspace."""
        async with self._sessions.begin() as session:
            mine = await repo.runs_of_user(session, team_id=team_id, user_id=user_id)
            whole = await _threads_of(session, user_id, mine)
            whole_ids = {t.id for t in whole}
            elsewhere = [r for r in mine if r.thread_id not in whole_ids]
            files = await repo.count_files(session, thread_ids=whole_ids, run_ids=[r.id for r in elsewhere])
            in_whole = await _forget_whole(session, whole)
            await repo.forget_runs(session, runs=elsewhere, turns=True)
            library = await repo.unname_library_files(session, team_id=team_id, user_id=user_id)
            rows = await repo.delete_user_rows(session, team_id=team_id, user_id=user_id)
        self._wake()  # the worker deletes the OpenAI objects
        forgotten = Forgotten(
            questions=_questions(mine),
            threads=len(whole),
            others_questions=_questions(r for r in in_whole if r.user_id != user_id),
            turns=_questions(elsewhere),
            files=files,
            library_files=library,
            other_rows=rows,
        )
        log.info("forgot a user of %s: %s", team_id, forgotten)
        return forgotten

    async def forget_workspace(self, team_id: str) -> Forgotten:
        """Uninstall: everything of the workspace, in batches. Safe to call again (an interrupted
        call is finished by the next one; a second finds nothing)."""
        questions = threads = files = 0
        while True:
            async with self._sessions.begin() as session:
                batch = await repo.threads_of_team(session, team_id=team_id, limit=THREAD_BATCH)
                if not batch:
                    break
                files += await repo.count_files(session, thread_ids=[t.id for t in batch], run_ids=())
                questions += _questions(await _forget_whole(session, batch))
            threads += len(batch)
            self._wake()
        async with self._sessions.begin() as session:
            library = await repo.forget_libraries(session, team_id=team_id)
            await repo.delete_team_rows(session, team_id=team_id)
        self._wake()
        forgotten = Forgotten(questions=questions, threads=threads, files=files, library_files=library)
        log.info("forgot workspace %s: %s", team_id, forgotten)
        return forgotten


async def _threads_of(session: AsyncSession, user_id: str, mine: Sequence[Run]) -> list[TutorThread]:
    """The threads that are this person's whole: started by their question, or only they asked."""
    threads = await repo.threads_by_ids(session, ids={r.thread_id for r in mine})
    askers = await repo.askers_of_threads(session, thread_ids=[t.id for t in threads])
    roots = {(r.thread_id, r.message_ts) for r in mine}
    return [t for t in threads if (t.id, t.thread_ts) in roots or askers.get(t.id, set()) <= {user_id}]


async def _forget_whole(session: AsyncSession, threads: Sequence[TutorThread]) -> list[Run]:
    """Delete threads whole: OpenAI objects queued, runs and rows deleted. Returns their runs."""
    runs = list(await repo.runs_of_threads(session, thread_ids=[t.id for t in threads]))
    await repo.forget_threads(session, threads=threads)
    await repo.forget_runs(session, runs=runs, turns=False)
    await repo.delete_threads(session, threads=threads)
    return runs


def _questions(runs: Iterable[Run]) -> int:
    return sum(1 for r in runs if r.kind == RunKind.ANSWER)
