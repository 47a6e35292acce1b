"""Prometheus /metrics counts what the sessions and the scheduler did; /healthz says whether
the server can take mail. Counters are process-wide, so the tests compare before and after."""

from __future__ import annotations

import asyncio
import smtplib
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pigeon.config import Limits
from pigeon.web.app import create_app
from pigeon.web.context import WebContext
from tests.servers import make_config
from tests.web_helpers import USER, running_web, send_mail


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_sessions_messages_refusals_deliveries_and_bytes(tmp_path: Path) -> None:
    with running_web(tmp_path) as web, httpx.Client(base_url=web.url, timeout=10) as client:
        before = scrape(client)
        send_mail(web.smtp_address, USER, "Counted")
        with smtplib.SMTP(*web.smtp_address, timeout=10) as smtp:
            smtp.ehlo("client.test")
            smtp.mail("someone@outside.test")
            code, _ = smtp.rcpt("nobody@elsewhere.test")  # not ours: relaying denied
            assert code == 550
        deadline = time.monotonic() + 10
        while True:
            after = scrape(client)
            delivered = after.get(
                ("pigeon_deliveries_total", (("destination", "local"), ("result", "delivered"))), 0
            )
            if delivered > before.get(
                ("pigeon_deliveries_total", (("destination", "local"), ("result", "delivered"))), 0
            ):
                break
            assert time.monotonic() < deadline, "no delivery was counted"
            time.sleep(0.05)

        def grew(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
            return after.get((name, labels), 0) - before.get((name, labels), 0)

        assert grew("pigeon_smtp_messages_accepted_total") == 1
        assert grew("pigeon_smtp_refused_total", (("reason", "recipient"),)) == 1
        assert grew("pigeon_smtp_received_bytes_total") > 100
        assert grew("pigeon_smtp_sent_bytes_total") > 100
        assert grew("pigeon_delivery_latency_seconds_count", (("destination", "local"),)) == 1
        assert ("pigeon_smtp_sessions_open", ()) in after
        assert after[("pigeon_queue_recipients", (("state", "deferred"),))] == 0


def ask(context: WebContext, path: str) -> httpx.Response:
    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(context))
        async with httpx.AsyncClient(transport=transport, base_url="http://pigeon.test") as client:
            return await client.get(path)

    return asyncio.run(get())


def test_healthz_is_ready_when_the_spool_is_writable_and_the_disk_has_room(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path / "data", limits=Limits(min_free_disk=0))
    config.spool_dir.mkdir(parents=True)
    context = WebContext.open(config)
    try:
        answer = ask(context, "/healthz")
        assert answer.status_code == 200
        assert answer.json() == {
            "status": "ok",
            "checks": {"spool_writable": "ok", "index_readable": "ok", "disk_above_floor": "ok"},
        }
    finally:
        context.close()


@pytest.mark.parametrize("trouble", ["spool", "disk", "index"])
def test_healthz_says_503_and_why_when_mail_cannot_be_taken(tmp_path: Path, trouble: str) -> None:
    config = make_config(tmp_path / "data", limits=Limits(min_free_disk=0))
    config.data_dir.mkdir(parents=True)
    if trouble == "spool":
        config.spool_dir.write_text("a file where the spool directory should be")
    else:
        config.spool_dir.mkdir()
    if trouble == "disk":
        config = replace(config, limits=Limits(min_free_disk=1 << 62))
    if trouble == "index":
        config.queue_index.write_bytes(b"this is not a database" * 100)
    context = WebContext.open(config)
    try:
        answer = ask(context, "/healthz")
    finally:
        context.close()
    assert answer.status_code == 503
    failing = {name for name, result in answer.json()["checks"].items() if result != "ok"}
    assert (
        failing
        == {
            "spool": {"spool_writable"},
            "disk": {"disk_above_floor"},
            "index": {"index_readable"},
        }[trouble]
    )
