from __future__ import annotations

import email.policy
import email.utils
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser

__all__ = ["Action", "RecipientStatus", "build_dsn"]

_POLICY = email.policy.SMTP


class Action(enum.Enum):
    """RFC 3464 section 2.3.3."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """What happened to one recipient, as a DSN reports it."""

    recipient: str
    action: Action
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str = ""  # the remote server's reply, or our own explanation
    remote_mta: str | None = None  # the host that gave the reply, when one did
    original_recipient: str | None = None  # ORCPT (RFC 3461), when given
    last_attempt: float | None = None
    will_retry_until: float | None = None  # for delay warnings


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    original: bytes,
    arrival: float,
    recipients: Sequence[RecipientStatus],
    queue_id: str | None = None,
    envelope_id: str | None = None,
    headers_only: bool = False,
    now: float | None = None,
) -> bytes:
    """The notification to send to ``sender`` about ``original``.

    One notification covers every recipient given (RFC 3464 section 2: several failed
    recipients of one message give one bounce). ``headers_only`` returns just the original's
    header (RET=HDRS, or a message too big to send back whole)."""
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    actions = {r.action for r in recipients}
    report = EmailMessage(policy=_POLICY)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = sender
    report["Subject"] = _subject(actions)
    report["Date"] = email.utils.formatdate(now, localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no vacation replies to bounces
    original_headers = BytesHeaderParser(policy=_POLICY).parsebytes(original)
    if original_headers["Message-ID"]:
        report["In-Reply-To"] = str(original_headers["Message-ID"])
    report.set_content(_human_text(reporting_mta, queue_id, original_headers, recipients))
    report.make_mixed()
    # multipart/report; report-type=delivery-status (RFC 6522)
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    status = Message(policy=_POLICY)
    status.set_type("message/delivery-status")
    per_message = Message(policy=_POLICY)
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    if queue_id:
        per_message["X-Pigeon-Queue-ID"] = queue_id
    if envelope_id:
        per_message["Original-Envelope-Id"] = envelope_id
    per_message["Arrival-Date"] = email.utils.formatdate(arrival, localtime=True)
    blocks = [per_message]
    for recipient in recipients:
        block = Message(policy=_POLICY)
        if recipient.original_recipient:
            block["Original-Recipient"] = recipient.original_recipient
        block["Final-Recipient"] = f"rfc822; {recipient.recipient}"
        block["Action"] = recipient.action.value
        block["Status"] = recipient.status
        if recipient.remote_mta:
            block["Remote-MTA"] = f"dns; {recipient.remote_mta}"
        if recipient.diagnostic:
            block["Diagnostic-Code"] = f"smtp; {_one_line(recipient.diagnostic)}"
        if recipient.last_attempt is not None:
            block["Last-Attempt-Date"] = email.utils.formatdate(
                recipient.last_attempt, localtime=True
            )
        if recipient.will_retry_until is not None:
            block["Will-Retry-Until"] = email.utils.formatdate(
                recipient.will_retry_until, localtime=True
            )
        blocks.append(block)
    status.set_payload(blocks)  # type: ignore[arg-type]
    del status["MIME-Version"]  # set_type adds one; only the top level needs it
    report.attach(status)  # type: ignore[arg-type]

    if headers_only:
        returned = Message(policy=_POLICY)
        returned.set_type("text/rfc822-headers")
        header_end = original.find(b"\r\n\r\n")
        returned.set_payload(
            (original if header_end < 0 else original[: header_end + 2]).decode("utf-8", "replace")
        )
    else:
        returned = Message(policy=_POLICY)
        returned.set_type("message/rfc822")
        returned.set_payload([BytesParser(policy=_POLICY).parsebytes(original)])
    del returned["MIME-Version"]
    report.attach(returned)  # type: ignore[arg-type]
    return report.as_bytes(policy=_POLICY)


def _subject(actions: set[Action]) -> str:
    if Action.FAILED in actions:
        return "Undelivered Mail Returned to Sender"
    if Action.DELAYED in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def _human_text(
    reporting_mta: str,
    queue_id: str | None,
    headers: Message,
    recipients: Sequence[RecipientStatus],
) -> str:
    subject = headers.get("Subject", "(no subject)")
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    failed = [r for r in recipients if r.action is Action.FAILED]
    delayed = [r for r in recipients if r.action is Action.DELAYED]
    done = [r for r in recipients if r.action in (Action.DELIVERED, Action.RELAYED)]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not be delivered to",
            "one or more recipients. It's attached below.",
            "",
        ]
    if delayed:
        lines += [
            "Your message could not be delivered yet to the recipients below. The mail",
            "system will keep trying; you do not need to send it again.",
            "",
        ]
    if done:
        lines += ["Your message was delivered to the recipients below, as you asked.", ""]
    lines.append(f"Subject of your message: {subject}")
    if queue_id:
        lines.append(f"Queue id: {queue_id}")
    lines.append("")
    for recipient in recipients:
        lines.append(f"<{recipient.recipient}>: {recipient.action.value} ({recipient.status})")
        if recipient.diagnostic:
            where = f"host {recipient.remote_mta} said: " if recipient.remote_mta else ""
            lines.append(f"    {where}{_one_line(recipient.diagnostic)}")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    return " ".join(text.split())
