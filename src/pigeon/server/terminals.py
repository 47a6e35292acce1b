"""SEND at RCPT: a recipient must be a local user who is logged on to a terminal now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pigeon.smtp import Address, Reply

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["terminal_refusal"]


def terminal_refusal(context: ServerContext, recipient: Address) -> Reply | None:
    """None when a SEND to ``recipient`` (accepted as mail by the relay policy) can be shown
    on a terminal; else the refusal. RFC 821 section 3.5 answers a user who is not logged on
    with 450 "mailbox unavailable", so the sender may try again later."""
    address = str(recipient)
    mailbox = context.directory.find(recipient.local_part, recipient.domain)
    if mailbox is None:
        # Another server's user, an alias or a list: nobody here has a terminal for it.
        return Reply.of(
            550, f"<{address}>: SEND reaches the terminals of local users only", "5.7.1"
        )
    if not context.terminals.logged_on(mailbox.address):
        return Reply.of(450, f"<{address}>: user not logged on; try again later", "4.2.1")
    return None
