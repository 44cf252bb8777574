"""Prometheus metrics, one registry per process (per `Components`), served on `GET /metrics`.

Counters and histograms are updated where things happen (the two API gateways, the Slack
transports, the poller); the run queue is read from the database when `/metrics` is scraped, so
every process reports the same queue, and a database that does not answer within
`SCRAPE_DB_TIMEOUT` only costs that scrape its queue figures (`tutor_database_up 0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from db.models import Run, utcnow

log = logging.getLogger(__name__)

#: `text/plain; version=0.0.4`: what Prometheus expects of a scrape.
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: A scrape waits this long for the queue figures, then answers without them.
SCRAPE_DB_TIMEOUT = 2.0
#: From a cached Slack call to a minutes-long upload.
CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0, 300.0)

# A `_created` series beside every counter doubles the output and tells an operator nothing.
disable_created_metrics()  # type: ignore[no-untyped-call]


class CallMetrics:
    """Calls to one remote API (`openai` or `slack`): counts, errors and latency by method."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self._calls = Counter(
            f"tutor_{service}_calls", f"{service} API calls made, by method", ["method"], registry=registry
        )
        self._errors = Counter(
            f"tutor_{service}_call_errors",
            f"{service} API calls that failed, by method and error (HTTP status, API error or exception)",
            ["method", "error"],
            registry=registry,
        )
        self._seconds = Histogram(
            f"tutor_{service}_call_seconds",
            f"Duration of {service} API calls (SDK retries included), by method",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )

    @contextlib.contextmanager
    def timing(self, method: str, error_name: Callable[[Exception], str]) -> Iterator[None]:
        """Count and time the call made inside; `error_name` names what it raised, for a label."""
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            self._errors.labels(method, error_name(exc)).inc()
            raise
        finally:
            self._calls.labels(method).inc()
            self._seconds.labels(method).observe(time.perf_counter() - started)


class WorkerLoop(Protocol):
    """What the poller tells about itself (see `Poller.seconds_since_loop`)."""

    def seconds_since_loop(self) -> float | None: ...

    @property
    def active_runs(self) -> int: ...


@dataclass(frozen=True)
class QueueSnapshot:
    runs_by_state: dict[str, int]
    queued: int
    oldest_queued_age: float


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.openai = CallMetrics(registry, "openai")
        self.slack = CallMetrics(registry, "slack")
        self._received = Counter(
            "tutor_events_received", "Slack requests routed to the app, by type", ["type"], registry=registry
        )
        self._acked = Counter(
            "tutor_events_acked",
            "Slack requests answered 200 (acknowledged), by type",
            ["type"],
            registry=registry,
        )
        self._stored = Counter(
            "tutor_events_stored",
            "Slack messages stored as a new question before the ack, by event type",
            ["type"],
            registry=registry,
        )
        self._polls = Counter(
            "tutor_response_polls",
            "Polls (responses.retrieve) of a running response, by the status it had",
            ["status"],
            registry=registry,
        )
        self._streams = Counter(
            "tutor_response_streams",
            "Streamed responses, by how the stream ended (completed, interrupted, fell_back)",
            ["outcome"],
            registry=registry,
        )
        self._rescued = Counter(
            "tutor_runs_rescued",
            "Runs taken over from stopped workers, by how (restart: this worker's start; dead_worker)",
            ["reason"],
            registry=registry,
        )
        self._queue = _QueueCollector()
        registry.register(self._queue)

    def received(self, kind: str) -> None:
        self._received.labels(kind).inc()

    def acked(self, kind: str) -> None:
        self._acked.labels(kind).inc()

    def stored(self, kind: str) -> None:
        self._stored.labels(kind).inc()

    def polled(self, status: str) -> None:
        self._polls.labels(status).inc()

    def streamed(self, outcome: str) -> None:
        self._streams.labels(outcome).inc()

    def rescued(self, count: int, *, reason: str) -> None:
        self._rescued.labels(reason).inc(count)

    def track_queue(self, engine: AsyncEngine) -> None:
        """Report runs by state and the queue from this database at every scrape."""
        self._queue.engine = engine

    def track_worker(self, worker: WorkerLoop) -> None:
        self.registry.register(_WorkerCollector(worker))

    async def exposition(self) -> bytes:
        """The Prometheus text format, with the queue read from the database just now."""
        await self._queue.refresh()
        return generate_latest(self.registry)


class _QueueCollector(Collector):
    def __init__(self) -> None:
        self.engine: AsyncEngine | None = None
        self._snapshot: QueueSnapshot | None = None

    async def refresh(self) -> None:
        if self.engine is None:
            return
        try:
            async with asyncio.timeout(SCRAPE_DB_TIMEOUT):
                self._snapshot = await _read_queue(self.engine)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("metrics: database unavailable (%s); queue figures left out", type(exc).__name__)
            self._snapshot = None

    def collect(self) -> Iterable[Metric]:
        if self.engine is None:
            return
        snapshot = self._snapshot
        yield GaugeMetricFamily(
            "tutor_database_up",
            "1 when this scrape could read the run queue",
            value=int(snapshot is not None),
        )
        if snapshot is None:
            return
        runs = GaugeMetricFamily("tutor_runs", "Runs in the database, by state", labels=["state"])
        for state, count in sorted(snapshot.runs_by_state.items()):
            runs.add_metric([state], count)
        yield runs
        yield GaugeMetricFamily(
            "tutor_queue_depth", "Runs queued, not yet sent to OpenAI", value=snapshot.queued
        )
        yield GaugeMetricFamily(
            "tutor_queue_oldest_age_seconds",
            "Age of the oldest queued run (0 when none is queued)",
            value=snapshot.oldest_queued_age,
        )


async def _read_queue(engine: AsyncEngine) -> QueueSnapshot:
    # A plain connection, no session: two reads, nothing to commit.
    async with engine.connect() as connection:
        by_state = (await connection.execute(select(Run.status, func.count()).group_by(Run.status))).all()
        queued = await connection.execute(
            select(func.count(), func.min(Run.created_at)).where(Run.status == "queued")
        )
        count, oldest = queued.one()
    return QueueSnapshot(
        runs_by_state={str(state): int(n) for state, n in by_state},
        queued=int(count),
        oldest_queued_age=max(0.0, (utcnow() - oldest).total_seconds()) if oldest is not None else 0.0,
    )


class _WorkerCollector(Collector):
    def __init__(self, worker: WorkerLoop) -> None:
        self._worker = worker

    def collect(self) -> Iterable[Metric]:
        since = self._worker.seconds_since_loop()
        if since is None:  # no run-poller in this process (yet)
            return
        yield GaugeMetricFamily(
            "tutor_worker_loop_age_seconds", "Seconds since the run-poller's last loop iteration", value=since
        )
        yield GaugeMetricFamily(
            "tutor_worker_active_runs", "Runs this worker is driving now", value=self._worker.active_runs
        )
