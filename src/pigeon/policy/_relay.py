from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pigeon.directory import Directory
from pigeon.smtp import Address, Reply, replies

__all__ = ["RelayPolicy"]

# Characters that older mailers read as routing inside a local part: "user%remote@local" (the
# percent hack), "remote!user@local" (UUCP bang path) and '"user@remote"@local'. A local part
# holding one of them is never taken as a local user, because some program down the line may
# route on it and so make us an open relay (Postfix: allow_untrusted_routing = no).
_ROUTING_CHARACTERS = frozenset("@%!")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RelayPolicy:
    """Decides RCPT: our domains take mail for their users; others only from trusted clients.

    ``trusted_networks`` is empty by default, loopback included: a fresh server relays for
    nobody until its administrator says so.
    """

    def __init__(self, directory: Directory, trusted_networks: Iterable[str] = ()) -> None:
        self._directory = directory
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

    def check_recipient(self, recipient: Address, client_ip: str) -> Reply | None:
        address = str(recipient)
        if not recipient.domain:
            # A bare <postmaster> on a server with no domains of its own: nobody to take it.
            return replies.no_such_user(address)
        if self._directory.serves(recipient.domain):
            if _ROUTING_CHARACTERS.intersection(recipient.local_part):
                return replies.relay_denied(address)
            if self._directory.find(recipient.local_part, recipient.domain) is None:
                return replies.no_such_user(address)
            return None
        if self.is_trusted(client_ip):
            return None
        return replies.relay_denied(address)
