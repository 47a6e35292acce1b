"""The router the queue asks where each recipient goes, answered from the directory."""

from __future__ import annotations

from pigeon.directory import Alias, Directory, Forward, Mailbox, MailingList, Moved
from pigeon.queue.routing import Refused, Route, Router, ToExpansion, ToMailbox

__all__ = ["directory_router"]


def directory_router(directory: Directory) -> Router:
    def route(recipient: str, direct: bool) -> Route:
        local, _, domain = recipient.rpartition("@")
        if not directory.serves(domain):
            return None  # another server's
        if direct:
            # A forwarding user's own copy: their mailbox, however the address routes now.
            mailbox = directory.find(local, domain)
            if mailbox is None:
                return Refused("5.1.1", f"<{recipient}>: no mailbox here any more")
            return ToMailbox(mailbox.path, mailbox.address, mailbox.quota)
        found = directory.route(local, domain)
        if isinstance(found, Mailbox):
            return ToMailbox(found.path, found.address, found.quota)
        if isinstance(found, Alias):
            return ToExpansion(found.address, found.targets, "alias")
        if isinstance(found, Forward):
            return ToExpansion(
                found.address, found.targets, "forward", keep=found.mailbox is not None
            )
        if isinstance(found, MailingList):
            return ToExpansion(found.address, found.members, "list", sender=found.owner)
        if isinstance(found, Moved):
            return Refused("5.1.6", f"user has moved; please try <{found.new_address}>")
        # Accepted when it existed, removed from the directory since.
        return Refused("5.1.1", f"<{recipient}>: no such user here")

    return route
