"""For machines watching the server: Prometheus ``/metrics`` and ``/healthz``.

Neither needs a login (scrapers and load balancers have none) and neither tells anything
but counts and health; the web UI listens on loopback unless configured otherwise.

``/metrics`` adds to what the sessions and the scheduler count (``pigeon.metrics``) the
queue's size by state, read from the queue index at each scrape, so that it is right however
many workers there are. ``/healthz`` is the readiness check (spool writable, queue index
readable, disk above the floor: 503 when any fails); ``/healthz/live`` only says the process
answers.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from pigeon import metrics
from pigeon.queue.index import RecipientState

from .access import Context
from .api import queue_counts
from .context import WebContext

__all__ = ["router"]

router = APIRouter(include_in_schema=False)
# A "_created" series beside every counter doubles the output for nothing Prometheus uses.
disable_created_metrics()  # type: ignore[no-untyped-call]


class _QueueCollector(Collector):
    def __init__(self, context: WebContext) -> None:
        self._context = context

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "pigeon_queue_recipients", "Recipients in the queue index, by state.", labels=["state"]
        )
        counts = queue_counts(self._context)
        for state in RecipientState:
            if not state.final:
                family.add_metric([state.value], counts.get(state.value, 0))
        yield family


@router.get("/metrics")
def metrics_page(context: Context) -> Response:
    queue = CollectorRegistry()
    queue.register(_QueueCollector(context))
    directory = metrics.multiprocess_directory()
    if directory is not None:
        workers = CollectorRegistry()
        multiprocess.MultiProcessCollector(workers, path=str(directory))  # type: ignore[no-untyped-call]
        counted = generate_latest(workers)
    else:
        counted = generate_latest(REGISTRY)
    return Response(counted + generate_latest(queue), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/healthz")
def ready(context: Context) -> JSONResponse:
    checks = {
        "spool_writable": _spool_writable(context),
        "index_readable": _index_readable(context),
        "disk_above_floor": _disk_above_floor(context),
    }
    ok = all(result == "ok" for result in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "failing", "checks": checks}, status_code=200 if ok else 503
    )


def _spool_writable(context: WebContext) -> str:
    spool = context.config.spool_dir
    try:
        with tempfile.NamedTemporaryFile(dir=spool, prefix=".healthz-"):
            pass
    except OSError as error:
        return f"cannot write in {spool}: {error.strerror or error}"
    return "ok"


def _index_readable(context: WebContext) -> str:
    path = context.config.queue_index
    if not path.exists():
        return "ok"  # nothing has waited in the queue yet
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            db.execute("SELECT count(*) FROM messages").fetchone()
        finally:
            db.close()
    except sqlite3.Error as error:
        return f"queue index {path}: {error}"
    return "ok"


def _disk_above_floor(context: WebContext) -> str:
    floor = context.config.limits.min_free_disk
    spool = context.config.spool_dir
    try:
        free = shutil.disk_usage(spool if spool.exists() else context.config.data_dir).free
    except OSError as error:
        return f"cannot measure free space: {os.strerror(error.errno or 0)}"
    if free < floor:
        return f"{free} octets free, below limits.min_free_disk ({floor})"
    return "ok"
