"""The tables: tutor profiles, Slack threads, runs (the job rows), deliveries, usage, feedback."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


#: The profile of a thread that chose none: the math tutor (seeded by the first migration).
DEFAULT_PROFILE = "math"


class RunKind(StrEnum):
    #: A question for the model.
    ANSWER = "answer"
    #: Ask whether to analyse a shared file.
    OFFER = "offer"
    #: "Start over": forget the thread's conversation and files.
    RESET = "reset"
    #: "Show work": the code an earlier answer ran, shown to the person who asked.
    WORK = "work"
    #: Index files into the channel's library (bot.library).
    LIBRARY = "library"


class Rating(StrEnum):
    """What a person said of an answer with Slack's feedback buttons."""

    HELPFUL = "helpful"
    UNHELPFUL = "unhelpful"


class RunStatus(StrEnum):
    QUEUED = "queued"
    #: The create was sent; its outcome is not known yet.
    CREATING = "creating"
    #: The create's outcome could not be seen (a timeout, a 5xx): look for its answer.
    UNKNOWN = "unknown"
    #: The response exists and its events are being relayed into Slack.
    STREAMING = "streaming"
    #: The response exists and is polled (its stream broke down repeatedly).
    POLLING = "polling"
    #: The response is finished; the answer is being delivered.
    REPLYING = "replying"
    DONE = "done"
    FAILED = "failed"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class Profile(Base):
    """What an Assistant object used to be: the tutor's name, instructions, model and tools."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    instructions: Mapped[str] = mapped_column(Text)
    #: None means the operator's TUTOR_MODEL.
    model: Mapped[str | None] = mapped_column(String(128))
    tools: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TutorThread(Base):
    """One Slack thread (or a DM's top level) and the OpenAI objects that hold its memory."""

    __tablename__ = "tutor_threads"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "thread_ts", name="uq_tutor_threads_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    #: The thread root's ts; "" for the top level of a DM, which is one tutor thread until reset.
    thread_ts: Mapped[str] = mapped_column(String(32))
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))
    #: "active": the tutor answers every message here; "offered": only a file analysis was offered.
    state: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    conversation_id: Mapped[str | None] = mapped_column(String(128))
    container_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


#: The predicates of the partial indexes on runs (migration 0006).
_ACTIVE = text("status IN ('queued', 'creating', 'unknown', 'streaming', 'polling', 'replying')")
_FINISHED = text("finished_at IS NOT NULL")


class Run(Base):
    """One question and the model run that answers it: the unit of durability and of work."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("team_id", "channel_id", "message_ts", name="uq_runs_message"),
        Index("ix_runs_due", "status", "next_attempt_at"),
        Index("ix_runs_thread", "thread_id", "message_ts"),
        # Partial: as small as the work in flight, however many finished runs the table holds.
        Index("ix_runs_active", "next_attempt_at", postgresql_where=_ACTIVE, sqlite_where=_ACTIVE),
        Index(
            "ix_runs_active_thread", "thread_id", "message_ts", postgresql_where=_ACTIVE, sqlite_where=_ACTIVE
        ),
        Index("ix_runs_finished", "finished_at", postgresql_where=_FINISHED, sqlite_where=_FINISHED),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Goes to OpenAI as response metadata and to Slack as message metadata.
    run_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("tutor_threads.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    message_ts: Mapped[str] = mapped_column(String(32))
    #: Where the answer goes: the thread root, or None for the top level of a DM.
    reply_thread_ts: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    event_id: Mapped[str | None] = mapped_column(String(64))
    #: A RunKind. For WORK, `text` holds the run_uuid of the answer whose work is shown.
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.ANSWER, server_default="answer")
    #: Overrides the thread's profile for this run (file analyses use the data visualizer).
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))

    #: A RunStatus.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    #: Fencing token: every claim adds one. A transition or Slack call of a worker whose claim is
    #: older (it was frozen past its lease and the run was claimed again) is refused.
    lease_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    response_id: Mapped[str | None] = mapped_column(String(128))
    create_started_at: Mapped[datetime | None]
    status_shown_at: Mapped[datetime | None]
    #: When the current step first failed (None while it succeeds): retries stop at a deadline from here.
    failing_since: Mapped[datetime | None]
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    #: The live answer: the last relayed event's sequence_number (resume after it), the Slack
    #: messages the answer streams into (ts, in order; the last is the one growing), how it is
    #: shown (a LiveMode) and how many characters the last message holds. Saved in batches.
    stream_seq: Mapped[int | None] = mapped_column(Integer)
    stream_messages: Mapped[list[str] | None] = mapped_column(default=list)
    stream_mode: Mapped[str | None] = mapped_column(String(16))
    stream_chars: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Delivery(Base):
    """A Slack post or upload that belongs to a run; makes the replier exactly-once."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_deliveries_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    #: "text:0", "file:<container file id>", "error" …
    key: Mapped[str] = mapped_column(String(160))
    #: "pending" once we are about to call Slack, "done" once Slack answered.
    state: Mapped[str] = mapped_column(String(16), default="pending")
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    slack_file_id: Mapped[str | None] = mapped_column(String(32))
    #: When Slack was last asked to post or share it: an attempt whose answer was never seen may
    #: still land for a few seconds, so a retry looks for it only after that (reply.IN_FLIGHT).
    attempted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ThreadFile(Base):
    """A Slack file attached to a tutor thread, and where it lives at OpenAI."""

    __tablename__ = "thread_files"
    __table_args__ = (UniqueConstraint("thread_id", "slack_file_id", name="uq_thread_files_file"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thread_id: Mapped[int] = mapped_column(ForeignKey("tutor_threads.id", ondelete="CASCADE"))
    #: The run that brought the file (its question mentions it).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    team_id: Mapped[str] = mapped_column(String(32))
    slack_file_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(255))
    mimetype: Mapped[str] = mapped_column(String(128), default="")
    filetype: Mapped[str] = mapped_column(String(32), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The Slack file object as shared (URLs, access); refreshed from files.info when partial.
    slack_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: "pending" → "ready" (uploaded, in the container) or "rejected" (error_code says why).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error_code: Mapped[str | None] = mapped_column(String(64))
    openai_file_id: Mapped[str | None] = mapped_column(String(128))
    container_path: Mapped[str | None] = mapped_column(String(512))
    #: A document's pages (slides, estimated for text), counted on the way to OpenAI; None: unknown.
    pages: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelSettings(Base):
    """Per-channel choices: profile, custom instructions, automatic analysis of shared files."""

    __tablename__ = "channel_settings"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", name="uq_channel_settings_channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    auto_analyse: Mapped[bool] = mapped_column(Boolean, default=False)
    profile_id: Mapped[int | None] = mapped_column(ForeignKey("profiles.id"))
    custom_instructions: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Cleanup(Base):
    """An OpenAI object to delete (after a reset, retention, forget me or uninstall); retried until
    OpenAI says it is gone."""

    __tablename__ = "cleanups"
    __table_args__ = (Index("ix_cleanups_due", "done_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "conversation" (its items first), "turn" ("<conversation>/<message ts>": one question's items),
    #: "response", "container", "file", "vector_store" or "vector_store_file"
    kind: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(128))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    done_at: Mapped[datetime | None]


class VectorStore(Base):
    """The OpenAI vector store of a thread (its large documents) or a channel (its library)."""

    __tablename__ = "vector_stores"
    __table_args__ = (UniqueConstraint("scope_key", name="uq_vector_stores_scope_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "thread:<tutor thread id>" or "channel:<team>:<channel>".
    scope_key: Mapped[str] = mapped_column(String(96))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    openai_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Document(Base):
    """A Slack file in a vector store: Slack file → OpenAI file → vector store file, per scope."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("scope_key", "slack_file_id", name="uq_documents_scope_file"),
        Index("ix_documents_channel", "team_id", "channel_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: "thread" (a large document shared with a question) or "channel" (the channel's library).
    scope: Mapped[str] = mapped_column(String(16))
    scope_key: Mapped[str] = mapped_column(String(96))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_id: Mapped[int | None] = mapped_column(ForeignKey("tutor_threads.id", ondelete="CASCADE"))
    #: The run that brought it (its question, or the library add that indexes it).
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), index=True)
    slack_file_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    filetype: Mapped[str] = mapped_column(String(32), default="")
    mimetype: Mapped[str] = mapped_column(String(128), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    added_by: Mapped[str] = mapped_column(String(32), default="")
    slack_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: "pending" → "indexing" (added to the store) → "ready" | "failed" (OpenAI couldn't index it);
    #: "rejected": our own checks refused it (error_code says why).
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error_code: Mapped[str | None] = mapped_column(String(64))
    openai_file_id: Mapped[str | None] = mapped_column(String(128))
    vector_store_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LibraryRequest(Base):
    """`/tutor library add`: the next files this person shares in the channel go to its library."""

    __tablename__ = "library_requests"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "user_id", name="uq_library_requests_user"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime]


# Distribution mode (`bot.workspaces`): Slack's OAuth tables exactly as slack_sdk's
# AsyncSQLAlchemyInstallationStore and AsyncSQLAlchemyOAuthStateStore read and write them, built by
# their own builders on our metadata, so that migration 0008 is checked against what they query.
#: One row per completed install (oauth.v2.access), newest last.
slack_installations = SQLAlchemyInstallationStore.build_installations_table(
    Base.metadata, "slack_installations"
)
#: The bot token of each installed workspace (its refresh token and expiry with token rotation).
slack_bots = SQLAlchemyInstallationStore.build_bots_table(Base.metadata, "slack_bots")
#: The `state` of each install started at /slack/install, consumed at /slack/oauth_redirect.
slack_oauth_states = SQLAlchemyOAuthStateStore.build_oauth_states_table(Base.metadata, "slack_oauth_states")


class UsageRecord(Base):
    """What one answer run used, kept after the run itself is pruned: no question text, only counts."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("run_uuid", name="uq_usage_records_run_uuid"),
        Index("ix_usage_records_team_day", "team_id", "created_at"),
        Index("ix_usage_records_channel_day", "team_id", "channel_id", "created_at"),
        Index("ix_usage_records_user_day", "team_id", "user_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The run's run_uuid: a run's usage is recorded once, however often its reply is retried.
    run_uuid: Mapped[str] = mapped_column(String(36))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    #: From the response's `usage`: cached tokens are part of the input, reasoning of the output.
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    code_interpreter: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ChannelBudget(Base):
    """A channel's own daily token limits (`/tutor budget`); None: the workspace's setting applies."""

    __tablename__ = "channel_budgets"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", name="uq_channel_budgets_channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    #: Tokens a day per person asking here (instead of TUTOR_DAILY_TOKENS_PER_USER); 0: no limit.
    tokens_per_user: Mapped[int | None] = mapped_column(BigInteger)
    #: Tokens a day for everyone asking in this channel together; None or 0: no limit.
    tokens_per_channel: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Feedback(Base):
    """One person's rating of one answer (Slack's feedback buttons): their latest click, and what
    they said was wrong. Keyed by the answer's run_uuid, not its row: runs are pruned sooner."""

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("run_uuid", "user_id", name="uq_feedback_run_user"),
        Index("ix_feedback_team_updated", "team_id", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_uuid: Mapped[str] = mapped_column(String(36))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    #: A Rating.
    rating: Mapped[str] = mapped_column(String(16))
    #: The answer to "what was wrong?" after a thumbs-down; None if none was given.
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The latest click (or comment).
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
