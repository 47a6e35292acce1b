from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pigeon.delivery.local_checks import MailboxLocks, MailboxUsage
from pigeon.directory import Directory, Forward, Mailbox, MailingList, Moved
from pigeon.smtp import Address, Reply, replies

__all__ = ["RelayPolicy"]

# Characters that older mailers read as routing inside a local part: "user%remote@local" (the
# percent hack), "remote!user@local" (UUCP bang path) and '"user@remote"@local'. A local part
# holding one of them is never taken as a local user, because some program down the line may
# route on it and so make us an open relay (Postfix: allow_untrusted_routing = no).
_ROUTING_CHARACTERS = frozenset("@%!")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayPolicy:
    """Decides RCPT: our domains take mail for their users; others only from trusted clients
    and authenticated users.

    ``trusted_networks`` is empty by default, loopback included: a fresh server relays for
    nobody until its administrator says so.
    """

    def __init__(
        self,
        directory: Directory,
        trusted_networks: Iterable[str] = (),
        *,
        held_domains: Iterable[str] = (),
        usage: MailboxUsage | None = None,
    ) -> None:
        """``usage``: the mailbox sums the local deliveries keep up to date (the queue's)."""
        self._directory = directory
        # Domains held for on-demand relay ([odmr]): taken from anyone, as a backup MX takes
        # its primary's mail, and kept until their owner fetches it with ATRN.
        self._held = frozenset(d.lower() for d in held_domains)
        self._usage = usage or MailboxUsage()
        self._locks = MailboxLocks()
        self._trusted: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in trusted_networks
        )

    def is_trusted(self, client_ip: str) -> bool:
        if not self._trusted or not client_ip:
            return False
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)

    def canonical_recipient(self, recipient: Address) -> Address:
        """``<postmaster>`` with no domain means the postmaster of this server."""
        domain = self._directory.primary_domain
        if not recipient.domain and recipient.is_postmaster and domain is not None:
            return Address("postmaster", domain)
        return recipient

    def check_recipient(
        self,
        recipient: Address,
        client_ip: str,
        *,
        authenticated: bool = False,
        sender: str | None = None,
        size: int = 0,
    ) -> Reply | None:
        """None: accept with 250. A positive reply (251, "will forward"): accept with it.
        Anything else: the refusal. ``sender`` is MAIL's reverse-path ("" for <>), ``size``
        the size MAIL declared (0 if none), for mailing lists' posting rules and quotas."""
        address = str(recipient)
        if not recipient.domain:
            # A bare <postmaster> on a server with no domains of its own: nobody to take it.
            return replies.no_such_user(address)
        if self._directory.serves(recipient.domain):
            if _ROUTING_CHARACTERS.intersection(recipient.local_part):
                return replies.relay_denied(address)
            return self._local_recipient(recipient, sender, size)
        if authenticated or self.is_trusted(client_ip):
            return None
        if recipient.domain.lower() in self._held:
            if _ROUTING_CHARACTERS.intersection(recipient.local_part):
                return replies.relay_denied(address)
            return None
        return replies.relay_denied(address)

    def _local_recipient(self, recipient: Address, sender: str | None, size: int) -> Reply | None:
        """RFC 5321 3.4 and 4.2.2: what the directory says of one of our addresses."""
        address = str(recipient)
        route = self._directory.route(recipient.local_part, recipient.domain)
        if route is None:
            return replies.no_such_user(address)
        if isinstance(route, Moved):
            return Reply.of(551, f"User not local; please try <{route.new_address}>", "5.1.6")
        if isinstance(route, MailingList):
            if sender is not None and not route.may_post(sender):
                who = "its members" if route.posting == "members" else "its owner"
                return Reply.of(550, f"<{address}>: only {who} may post to this list", "5.7.1")
            return None
        mailbox = route.mailbox if isinstance(route, Forward) else route
        if isinstance(mailbox, Mailbox):
            if self._locks.is_locked(mailbox.path):
                return Reply.of(450, f"<{address}>: mailbox busy, try again later", "4.2.1")
            if mailbox.quota and self._over_quota(mailbox, size):
                return Reply.of(552, f"<{address}>: mailbox full", "5.2.2")
        if isinstance(route, Forward):
            shown = ", ".join(f"<{t}>" for t in route.targets[:3])
            return Reply.of(251, f"User not local; will forward to {shown}", "2.1.5")
        return None

    def _over_quota(self, mailbox: Mailbox, size: int) -> bool:
        """Whether ``size`` more octets would not fit. The sum the deliveries keep up to date
        answers without touching the disk (this runs on the event loop); the Maildir is
        counted again only the first time, or when that sum says it would not fit, so that
        mail a user deleted since is seen before anyone is refused. The delivery checks the
        quota again in any case."""
        known = self._usage.peek(mailbox.path)
        if known is not None and known + size < mailbox.quota:
            return False
        return self._usage.of(mailbox.path) + size >= mailbox.quota
