"""What a delivery agent reports for one recipient.

Agents never retry or bounce by themselves: they say what happened, and the queue decides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["DeliveryResult", "Outcome"]


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
