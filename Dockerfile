# syntax=docker/dockerfile:1
# slack-tutor: `docker build -t slack-tutor .` then `docker run --env-file .env -p 3000:3000 -v tutor-data:/data slack-tutor`
# (one container, SQLite under /data) or `docker compose up` (PostgreSQL, migrate, web, worker).
# No secret is baked in: tokens and keys come from the environment at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: resolve the locked production dependencies into /app/.venv with uv --------------------
FROM ${PYTHON_IMAGE} AS build
# uv pinned to the version that wrote uv.lock; only this stage has it.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first, from the lock file alone: this layer is rebuilt only when uv.lock changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --frozen --no-dev --no-install-project
# Then the project itself. It stays an editable install of /app (uv's default): db/migrate.py finds
# migrations/ next to db/, so the code must live in /app, not in site-packages.
COPY pyproject.toml uv.lock README.md alembic.ini ./
COPY bot ./bot
COPY db ./db
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -m compileall -q bot db migrations

# ---- runtime: the interpreter, the venv and the code; no uv, no compiler, no dev tools --------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 tutor \
    && useradd --system --uid 10001 --gid tutor --home-dir /data --no-create-home --shell /usr/sbin/nologin tutor \
    && mkdir -p /data \
    && chown tutor:tutor /data
WORKDIR /app
COPY --from=build /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=3000 \
    DATABASE_URL=sqlite+aiosqlite:////data/slack-tutor.db
# SQLite database for the single-container case (`slack-tutor run`); with PostgreSQL nothing is written.
VOLUME ["/data"]
USER tutor
EXPOSE 3000
# /healthz (web, worker and run) is 200 when every part is fine and 503 naming the failing one
# (database, Slack identity, Socket Mode, a stalled run-poller); urllib raises on a 503 or a refused
# connection, so the exit code is then 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=4)"]
CMD ["slack-tutor", "run"]
