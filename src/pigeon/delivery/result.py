"""What a delivery agent is given and what it reports, for one recipient.

Agents never retry or bounce by themselves: they say what happened, and the queue decides.
This module imports nothing of the queue at run time, so the queue may use it freely.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pigeon.queue.envelope import Envelope

__all__ = ["BodySource", "DeliveryResult", "MaildirItem", "Outcome"]


class BodySource(Protocol):
    """Where a message body is read from: a file, or the spool's reader over a record."""

    def read(self, size: int = -1, /) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class MaildirItem:
    """One message for one recipient, as ``MaildirAgent.deliver_many`` takes them."""

    maildir: Path
    body: BodySource
    recipient: str
    envelope: Envelope
    unique: str
    check_existing: bool = False


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # temporary: the queue tries again later
    FAILED = "failed"  # permanent: the queue returns the message to its sender


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    recipient: str
    outcome: Outcome
    # RFC 3463 enhanced status code ("2.0.0", "4.2.1", "5.1.1") and a sentence for the log and
    # for a bounce. For a remote hop, ``detail`` carries the remote server's reply.
    status: str
    detail: str
    # The server that gave the reply, for a remote hop ("mx.remote.test"), and whether it
    # took the RFC 3461 notification duty along with the message (it offered DSN and was
    # given NOTIFY): then this hop sends no success notice of its own.
    remote_mta: str = ""
    dsn_passed_on: bool = False
    # The address was an alias, a forward or a list: a new message went to its targets
    # (RFC 3464's "expanded").
    expanded: bool = False
