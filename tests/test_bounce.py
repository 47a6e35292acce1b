"""Bounces: RFC 3464 reports built by pigeon.bounce and sent back through the queue."""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Sequence
from email.message import EmailMessage, Message
from pathlib import Path

from pigeon.bounce import Action, RecipientStatus, build_dsn
from pigeon.delivery import DeliveryResult, MaildirAgent, MaildirItem, Outcome
from pigeon.queue import Envelope, QueueIndex, Scheduler, Spool
from tests.servers import read_maildir

ORIGINAL = (
    b"From: carol@example.test\r\nSubject: Lunch?\r\nMessage-ID: <m1@example.test>\r\n\r\nNoon?\r\n"
)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def status_blocks(report: EmailMessage) -> list[Message]:
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts][:2] == ["text/plain", "message/delivery-status"]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


def test_a_report_has_the_three_parts_and_the_fields() -> None:
    data = build_dsn(
        reporting_mta="mx.example.test",
        sender="carol@example.test",
        original=ORIGINAL,
        arrival=1_700_000_000,
        recipients=[
            RecipientStatus(
                "dave@remote.test",
                Action.FAILED,
                "5.1.1",
                "550 5.1.1 <dave@remote.test>: User unknown",
                "mx.remote.test",
            ),
            RecipientStatus(
                "erin@remote.test",
                Action.FAILED,
                "5.2.2",
                "552 5.2.2 Mailbox full",
                "mx.remote.test",
            ),
        ],
        queue_id="Q123",
    )
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"] == "carol@example.test"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["In-Reply-To"] == "<m1@example.test>"
    human = next(iter(report.iter_parts())).get_content()
    assert "could not be delivered" in human
    assert "host mx.remote.test said: 550 5.1.1" in human
    per_message, *per_recipient = status_blocks(report)
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Arrival-Date"]
    assert [b["Final-Recipient"] for b in per_recipient] == [
        "rfc822; dave@remote.test",
        "rfc822; erin@remote.test",
    ]
    assert [b["Action"] for b in per_recipient] == ["failed", "failed"]
    assert [b["Status"] for b in per_recipient] == ["5.1.1", "5.2.2"]
    assert per_recipient[0]["Remote-MTA"] == "dns; mx.remote.test"
    assert per_recipient[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 <dave@remote.test>: User unknown"
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    assert b"Noon?" in returned.as_bytes()


def test_headers_only_returns_no_body() -> None:
    data = build_dsn(
        reporting_mta="mx.example.test",
        sender="carol@example.test",
        original=ORIGINAL,
        arrival=0,
        recipients=[RecipientStatus("d@remote.test", Action.DELAYED, "4.4.1", "timeout")],
        headers_only=True,
    )
    report = parse(data)
    assert report["Subject"].startswith("Delayed Mail")
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Lunch?" in data
    assert b"Noon?" not in data


class FailingAgent(MaildirAgent):
    """Delivers for real, except that recipients named fail-* fail for good."""

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]:
        good = [i for i in items if not i.recipient.startswith("fail")]
        delivered = iter(super().deliver_many(good))
        return [
            DeliveryResult(i.recipient, Outcome.FAILED, "5.2.1", "mailbox disabled (test)")
            if i.recipient.startswith("fail")
            else next(delivered)
            for i in items
        ]


async def run_queue(root: Path, sender: str, recipients: tuple[str, ...]) -> None:
    spool = Spool(root / "spool")
    await spool.open()
    scheduler = Scheduler(
        spool,
        index=QueueIndex(root / "queue.db"),
        local_agent=FailingAgent(hostname="mx.example.test"),
        find_maildir=lambda r: root / "mail" / r.partition("@")[0],
        reporting_mta="mx.example.test",
        postmaster="postmaster@example.test",
    )
    scheduler.start()
    writer = spool.new_message()
    writer.write(ORIGINAL)
    envelope = Envelope(sender, recipients, received_at=time.time())
    scheduler.submit(await spool.commit(writer, envelope))
    await asyncio.wait_for(scheduler.wait_idle(), 30)
    await scheduler.stop()
    await spool.close()


def test_failed_recipients_give_one_bounce_to_the_sender(tmp_path: Path) -> None:
    recipients = ("alice@example.test", "fail1@example.test", "fail2@example.test")
    asyncio.run(run_queue(tmp_path, "carol@example.test", recipients))
    assert len(read_maildir(tmp_path / "mail" / "alice")) == 1
    (bounce,) = read_maildir(tmp_path / "mail" / "carol")
    report = parse(bounce)
    assert bounce.startswith(b"Return-Path: <>\n")  # from the null sender
    _, *blocks = status_blocks(report)
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; fail1@example.test",
        "rfc822; fail2@example.test",
    ]
    assert {b["Status"] for b in blocks} == {"5.2.1"}


def test_a_bounce_that_fails_goes_to_the_postmaster_and_no_further(tmp_path: Path) -> None:
    asyncio.run(run_queue(tmp_path, "", ("fail@example.test",)))
    (double,) = read_maildir(tmp_path / "mail" / "postmaster")
    assert b"rfc822; fail@example.test" in double
    # Only one report: the postmaster's copy did not fail, and nothing bounced again.
    assert not (tmp_path / "mail" / "fail").exists()


def test_a_double_bounce_to_a_failing_postmaster_is_dropped(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path / "spool")
        await spool.open()
        scheduler = Scheduler(
            spool,
            index=QueueIndex(tmp_path / "queue.db"),
            local_agent=FailingAgent(hostname="mx.example.test"),
            find_maildir=lambda r: tmp_path / "mail" / r.partition("@")[0],
            postmaster="fail-postmaster@example.test",
        )
        scheduler.start()
        writer = spool.new_message()
        writer.write(ORIGINAL)
        envelope = Envelope("", ("fail@example.test",), received_at=time.time())
        scheduler.submit(await spool.commit(writer, envelope))
        await asyncio.wait_for(scheduler.wait_idle(), 30)
        await scheduler.stop()
        await spool.close()

    asyncio.run(run())  # terminates: no bounce loop
    assert not (tmp_path / "mail").exists() or not any((tmp_path / "mail").iterdir())


class DeferringAgent(MaildirAgent):
    """Every recipient named slow-* fails temporarily."""

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]:
        good = [i for i in items if not i.recipient.startswith("slow")]
        delivered = iter(super().deliver_many(good))
        return [
            DeliveryResult(i.recipient, Outcome.DEFERRED, "4.2.0", "mailbox busy (test)")
            if i.recipient.startswith("slow")
            else next(delivered)
            for i in items
        ]


async def run_aged(root: Path, age: float) -> None:
    """One delivery attempt of a message that arrived ``age`` seconds ago (by the clock)."""
    spool = Spool(root / "spool")
    await spool.open()
    arrival = time.time()
    scheduler = Scheduler(
        spool,
        index=QueueIndex(root / "queue.db"),
        local_agent=DeferringAgent(hostname="mx.example.test"),
        find_maildir=lambda r: root / "mail" / r.partition("@")[0],
        reporting_mta="mx.example.test",
        clock=lambda: arrival + age,
        retry_base=3600,  # no retry within the test
    )
    scheduler.start()
    writer = spool.new_message()
    writer.write(ORIGINAL)
    envelope = Envelope("carol@example.test", ("slow@example.test",), received_at=arrival)
    scheduler.submit(await spool.commit(writer, envelope))
    await asyncio.wait_for(scheduler.wait_idle(), 30)
    await scheduler.stop()
    await spool.close()


def test_a_deferred_recipient_expires_after_the_queue_lifetime(tmp_path: Path) -> None:
    asyncio.run(run_aged(tmp_path, age=5 * 86400 + 1))
    (bounce,) = read_maildir(tmp_path / "mail" / "carol")
    _, block = status_blocks(parse(bounce))
    assert block["Action"] == "failed"
    assert block["Status"] == "5.4.7"
    assert "mailbox busy (test)" in block["Diagnostic-Code"]


def test_one_delay_warning_after_four_hours(tmp_path: Path) -> None:
    asyncio.run(run_aged(tmp_path, age=4 * 3600 + 1))
    (warning,) = read_maildir(tmp_path / "mail" / "carol")
    report = parse(warning)
    assert report["Subject"].startswith("Delayed Mail")
    _, block = status_blocks(report)
    assert block["Action"] == "delayed"
    assert block["Will-Retry-Until"]


def test_no_warning_before_four_hours(tmp_path: Path) -> None:
    asyncio.run(run_aged(tmp_path, age=3 * 3600))
    assert read_maildir(tmp_path / "mail" / "carol") == []
