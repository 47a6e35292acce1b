"""Where the queue takes each recipient: the answers a router gives the scheduler.

The directory knows addresses, the queue knows delivery; the server joins them with a
router (``pigeon.server.routes``) so that neither imports the other. A recipient is either
written to a local mailbox, expanded into a new message to other addresses (an alias, a
forwarding user, a mailing list), refused for a reason the directory gives, or (``None``)
sent to another server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DIRECT", "Held", "Refused", "Route", "Router", "ToExpansion", "ToMailbox"]

# The RCPT parameter that marks a recipient of an expansion as "this user's own copy": it is
# written to the user's mailbox without being routed again (a forwarding user who keeps a
# copy would otherwise forward it once more). Clients cannot send it: the SMTP core accepts
# only the parameters it knows.
DIRECT = "X-PIGEON-DIRECT"


@dataclass(frozen=True, slots=True)
class ToMailbox:
    maildir: Path
    address: str  # the mailbox's own address
    quota: int = 0  # octets; 0: no limit


@dataclass(frozen=True, slots=True)
class ToExpansion:
    address: str  # the alias, forwarding user or list
    targets: tuple[str, ...]
    kind: str  # "alias", "forward" or "list"
    sender: str | None = None  # a list's owner: its bounces go there (RFC 5321 3.9.2)
    keep: bool = False  # a forwarding user who keeps a copy in their mailbox


@dataclass(frozen=True, slots=True)
class Refused:
    status: str  # RFC 3463, e.g. "5.1.1"
    detail: str


@dataclass(frozen=True, slots=True)
class Held:
    """Another server's recipient whose mail waits here until fetched (on-demand relay,
    RFC 2645): the recipient is held, with ``detail`` as its last reply."""

    detail: str


Route = ToMailbox | ToExpansion | Refused | Held | None
# (recipient address, direct) -> route; ``direct`` is True for a recipient marked DIRECT.
Router = Callable[[str, bool], Route]
