"""The server's Prometheus metrics, counted where things happen and shown by ``pigeon.web``.

This module is neutral ground: the session and the scheduler count into it with one call
each, and the web app reads it, so neither of them imports the web package (nor the other).

Several worker processes (``pigeon serve --workers N``) count into files under
``<data_dir>/metrics`` (prometheus-client's multiprocess mode), so that ``/metrics``, served
by one worker, shows the whole server. ``use_directory`` must run before the workers start:
prometheus-client chooses how to store values when it is first imported in a process, from
``PROMETHEUS_MULTIPROC_DIR``, and a spawned worker imports it afresh with the environment
it was given.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram, multiprocess

if TYPE_CHECKING:
    from pigeon.delivery.result import DeliveryResult

__all__ = [
    "BYTES_IN",
    "BYTES_OUT",
    "DELIVERIES",
    "DELIVERY_SECONDS",
    "MESSAGES_ACCEPTED",
    "MESSAGES_REFUSED",
    "MULTIPROCESS_ENV",
    "SESSIONS_OPEN",
    "deliveries",
    "forget_process",
    "multiprocess_directory",
    "refused",
    "use_directory",
]

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

SESSIONS_OPEN = Gauge(
    "pigeon_smtp_sessions_open",
    "SMTP sessions open now.",
    multiprocess_mode="livesum",  # the sum over the workers that are alive
)
MESSAGES_ACCEPTED = Counter(
    "pigeon_smtp_messages_accepted", "Messages accepted (250 after the spool's fsync)."
)
MESSAGES_REFUSED = Counter(
    "pigeon_smtp_refused",
    "Commands and messages refused, by reason.",
    ["reason"],
)
BYTES_IN = Counter("pigeon_smtp_received_bytes", "Octets received from SMTP clients.")
BYTES_OUT = Counter("pigeon_smtp_sent_bytes", "Octets sent to SMTP clients.")
DELIVERIES = Counter(
    "pigeon_deliveries",
    "Results of delivery attempts per recipient, by result and destination (local or remote).",
    ["result", "destination"],
)
DELIVERY_SECONDS = Histogram(
    "pigeon_delivery_latency_seconds",
    "Seconds from acceptance to delivery, per delivered recipient.",
    ["destination"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)

# The reasons a refusal is counted under: a fixed few, so that the metric stays small.
REFUSAL_REASONS = frozenset(
    {
        "connections",  # too many sessions, or too many from one address
        "disk",  # below limits.min_free_disk
        "sender",  # an authenticated user's MAIL FROM is not theirs
        "rate",  # messages per session, message rate per address or user
        "recipient",  # RCPT refused: unknown user, relaying denied, bad routing
        "message",  # the message itself: too big, bare line ends, ...
    }
)


def refused(reason: str) -> None:
    """Count one refusal; ``reason`` is one of ``REFUSAL_REASONS``."""
    MESSAGES_REFUSED.labels(reason=reason).inc()


def deliveries(
    domain: str, received_at: float, results: Iterable[tuple[int, DeliveryResult]]
) -> None:
    """Count the results of one part of a delivery attempt. ``domain`` is the scheduler's
    route: "" for the local lane (Maildirs), else the remote domain."""
    destination = "remote" if domain else "local"
    now = time.time()
    for _, result in results:
        outcome = result.outcome.value
        DELIVERIES.labels(result=outcome, destination=destination).inc()
        if outcome == "delivered":
            DELIVERY_SECONDS.labels(destination=destination).observe(max(0.0, now - received_at))


def multiprocess_directory() -> Path | None:
    """Where the workers of this server count, or None when it is one process."""
    value = os.environ.get(MULTIPROCESS_ENV)
    return Path(value) if value else None


def use_directory(data_dir: Path) -> Path:
    """Make the worker processes started from now on count into ``<data_dir>/metrics``.

    The directory is emptied first: counts left by a previous run would be added to this
    one's."""
    directory = data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROCESS_ENV] = str(directory.resolve())
    return directory


def forget_process(pid: int) -> None:
    """A worker has exited: its share of the live gauges (open sessions) no longer counts."""
    if multiprocess_directory() is None:
        return
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
