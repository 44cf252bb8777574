"""Settings from the environment and `.env`; every missing variable named at once."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.errors import ConfigError

DEFAULT_MODEL = "gpt-6-luna"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///slack-tutor.db"

#: Where an operator finds each required value.
WHERE_TO_GET = {
    "SLACK_BOT_TOKEN": (
        "the Bot User OAuth Token (xoxb-…) under OAuth & Permissions in your Slack app "
        "(or, to install the app in many workspaces, SLACK_CLIENT_ID and SLACK_CLIENT_SECRET instead)"
    ),
    "SLACK_CLIENT_ID": "Basic Information → App Credentials → Client ID in your Slack app",
    "SLACK_CLIENT_SECRET": "Basic Information → App Credentials → Client Secret in your Slack app",
    "SLACK_SIGNING_SECRET": (
        "Basic Information → App Credentials → Signing Secret in your Slack app "
        "(or set SLACK_APP_TOKEN to use Socket Mode instead of HTTP)"
    ),
    "OPENAI_API_KEY": "an API key from https://platform.openai.com/api-keys",
}


class DatabaseSettings(BaseSettings):
    """The part of the configuration `migrate` and `manifest` need: no secrets."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = DEFAULT_DATABASE_URL
    #: PostgreSQL: the pool of each process (connections held open, and extra ones under load).
    database_pool_size: int = Field(default=5, ge=1)
    database_max_overflow: int = Field(default=5, ge=0)
    #: PostgreSQL: where a worker LISTENs for new work, when DATABASE_URL goes through a
    #: transaction-pooling PgBouncer (LISTEN needs a session: the database itself, or a
    #: session-pooling bouncer). Default: DATABASE_URL.
    database_listen_url: str | None = None


class Settings(DatabaseSettings):
    #: Set: one workspace, this token (single-workspace mode). Unset, with SLACK_CLIENT_ID and
    #: SLACK_CLIENT_SECRET: distribution mode, a token per installed workspace (`bot.workspaces`).
    slack_bot_token: SecretStr | None = None
    slack_client_id: str | None = None
    slack_client_secret: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"

    openai_api_key: SecretStr
    openai_base_url: str | None = None

    tutor_model: str = DEFAULT_MODEL
    tutor_reasoning_effort: Literal["low", "medium", "high"] = "low"
    tutor_max_output_tokens: int = Field(default=16000, ge=1000)

    port: int = 3000
    log_level: str = "INFO"
    #: `json`: one JSON object per line, with run_id, team, channel, thread_ts and response_id.
    log_format: Literal["text", "json"] = "text"
    #: Serve Prometheus metrics on `GET /metrics` (same port as /healthz; not for the public).
    tutor_metrics: bool = True
    #: Set: `/metrics` answers only a scrape that sends `Authorization: Bearer <this>` (for a host
    #: where the port is public, as on Heroku); others get 401.
    tutor_metrics_token: SecretStr | None = None
    #: /healthz fails when the run-poller's loop has not come round for this long.
    tutor_stall_seconds: float = Field(default=60.0, gt=0)

    #: Seconds between polls of a running response; idle workers look for new runs twice as often.
    tutor_poll_interval: float = Field(default=1.0, gt=0)
    #: A claimed run is released to other workers this long after its worker stops heart-beating.
    tutor_lease_seconds: float = Field(default=30.0, gt=0, le=60)
    #: A response still running after this long is cancelled and the user told.
    tutor_run_timeout: float = Field(default=900.0, gt=0)
    #: Creates (and retries of any other failing step) before the user is told.
    tutor_max_attempts: int = Field(default=6, ge=1)
    #: Deadline of an ordinary OpenAI call (retrieve, list); a create gets twice as long.
    tutor_openai_timeout: float = Field(default=10.0, gt=0)
    #: `uvloop`: libuv's event loop (less CPU per request and per answer), where it is installed
    #: (not on Windows); `asyncio`: Python's own.
    tutor_event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    #: Runs one worker drives at once; a slow run holds one slot, never the others.
    tutor_worker_concurrency: int = Field(default=32, ge=1)
    #: Longest pause between two retries of a failing step.
    tutor_retry_backoff_cap: float = Field(default=30.0, gt=0)
    #: Delivery to Slack is retried this long (outages) before the answer is given up.
    tutor_delivery_deadline: float = Field(default=1800.0, gt=0)
    #: A question still retrying after this long gets "OpenAI is slow to answer, still trying…".
    tutor_slow_notice: float = Field(default=45.0, gt=0)
    #: On SIGTERM, runs not finished within this long are released to the next worker.
    tutor_shutdown_grace: float = Field(default=3.0, ge=0)
    #: Shared files above this size get a clear sentence and are not downloaded.
    tutor_max_file_mb: int = Field(default=50, ge=1, le=512)
    #: Posts into one channel per second (Slack allows about 1), and how many may go at once.
    tutor_slack_channel_rate: float = Field(default=1.0, gt=0)
    tutor_slack_channel_burst: int = Field(default=3, ge=1)
    #: Questions (text, delivery rows, stored responses, turns), threads idle this long (their
    #: conversation, sandbox, files) and finished clean-ups are deleted after this (bot.retention).
    tutor_retention_days: float = Field(default=30.0, gt=0)
    #: The first pruning comes at a random moment within this many seconds of a worker's start
    #: (workers started together do not all try at once); then hourly.
    tutor_retention_first_within: float = Field(default=60.0, ge=0)
    #: A shared document up to this many pages (and TUTOR_DOCUMENT_MAX_MB) is shown to the model
    #: page by page (`input_file`); a larger one goes to the thread's vector store and is searched.
    tutor_document_max_pages: int = Field(default=30, ge=0)
    tutor_document_max_mb: float = Field(default=10.0, ge=0)
    #: How long a question waits for its documents to be indexed, and a library add for its files.
    tutor_index_wait: float = Field(default=120.0, gt=0)
    #: Daily token budgets (input + output, UTC days); 0: no limit. `/tutor budget` sets a channel's
    #: own per-user limit (and a channel-wide one) over these.
    tutor_daily_tokens_per_user: int = Field(default=0, ge=0)
    tutor_daily_tokens_per_workspace: int = Field(default=0, ge=0)
    #: Usage rows (token counts per answer, no content) are deleted after this many days.
    tutor_usage_retention_days: float = Field(default=400.0, gt=0)
    #: Display equations as images (mathtext PNGs in the answer); false: Unicode text only.
    tutor_math_images: bool = True

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    @property
    def distribution(self) -> bool:
        """Installed through OAuth in many workspaces (no SLACK_BOT_TOKEN, client id and secret set)."""
        return (
            self.slack_bot_token is None
            and bool(self.slack_client_id)
            and self.slack_client_secret is not None
        )


class _ModeSettings(DatabaseSettings):
    slack_bot_token: SecretStr | None = None
    slack_client_id: str | None = None
    slack_client_secret: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None


def _missing_slack_credentials(mode: _ModeSettings) -> list[str]:
    """SLACK_BOT_TOKEN (one workspace), or the OAuth client id and secret (many): what is missing."""
    if mode.slack_bot_token is not None:
        return []
    oauth = {
        "SLACK_CLIENT_ID": bool(mode.slack_client_id),
        "SLACK_CLIENT_SECRET": bool(mode.slack_client_secret),
    }
    if not any(oauth.values()):
        return ["SLACK_BOT_TOKEN"]
    return [name for name, present in oauth.items() if not present]


def load_settings() -> Settings:
    """Read the settings or raise ConfigError naming every missing variable."""
    mode = _ModeSettings()
    missing = _missing_slack_credentials(mode)
    if mode.slack_signing_secret is None and mode.slack_app_token is None:
        missing.append("SLACK_SIGNING_SECRET")
    try:
        settings = Settings()  # type: ignore[call-arg]  # filled from the environment
    except ValidationError as exc:
        invalid: list[str] = []
        for err in exc.errors():
            name = str(err["loc"][0]).upper() if err["loc"] else "?"
            if err["type"] == "missing":
                missing.insert(0, name)
            else:
                invalid.append(f"  {name}: {err['msg']}")
        raise ConfigError(_describe(missing, invalid)) from None
    if missing:
        raise ConfigError(_describe(missing, []))
    return settings


def _describe(missing: list[str], invalid: list[str]) -> str:
    lines = []
    if missing:
        lines.append("slack-tutor is missing required settings (set them in the environment or .env):")
        lines += [f"  {name}: {WHERE_TO_GET.get(name, 'see README.md')}" for name in missing]
    if invalid:
        lines.append("slack-tutor has invalid settings:")
        lines += invalid
    return "\n".join(lines)
