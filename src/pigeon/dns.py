"""DNS through the resolvers the administrator named, and no others.

Pigeon never falls back to the machine's /etc/resolv.conf: with no ``resolver`` configured
there are no lookups at all, and ``resolver = ["system"]`` is how an administrator asks for
the system's servers. That keeps tests (which start their own DNS server on loopback)
and cautious deployments from leaking queries.
"""

from __future__ import annotations

import ipaddress

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.resolver
import dns.reversename

from pigeon.config import parse_host_port

__all__ = ["authenticating", "make_resolver", "reverse_name"]


def make_resolver(
    servers: tuple[str, ...], *, timeout: float = 5.0
) -> dns.asyncresolver.Resolver | None:
    """A resolver that asks exactly ``servers`` ("127.0.0.1:5353", "[::1]:53"), or None.

    ``("system",)`` is the one way to use the machine's /etc/resolv.conf: an explicit choice
    of the administrator, never a fallback."""
    if not servers:
        return None
    if servers == ("system",):
        system = dns.asyncresolver.Resolver(configure=True)
        system.lifetime = timeout
        system.timeout = timeout
        return system
    resolver = dns.asyncresolver.Resolver(configure=False)
    nameservers = []
    ports = set()
    for server in servers:
        host, port = parse_host_port(server, default_port=53)
        nameservers.append(host)
        ports.add(port)
    if len(ports) > 1:
        # dnspython's Resolver takes one port for all its servers.
        raise ValueError("all resolver addresses must use the same port")
    resolver.nameservers = nameservers
    resolver.port = ports.pop()
    resolver.lifetime = timeout
    resolver.timeout = timeout
    return resolver


def authenticating(resolver: dns.asyncresolver.Resolver) -> dns.asyncresolver.Resolver:
    """``resolver``, asking with the AD flag (RFC 6840 section 5.7), so that a validating
    resolver says in its answer's AD flag whether it validated the data with DNSSEC. Pigeon
    does not validate signatures itself: like Postfix's ``smtp_dns_support_level = dnssec``
    it trusts the resolver the administrator named, which should be on this host."""
    clone = dns.asyncresolver.Resolver(configure=False)
    clone.nameservers = list(resolver.nameservers)
    clone.port = resolver.port
    clone.lifetime = resolver.lifetime
    clone.timeout = resolver.timeout
    clone.flags = dns.flags.RD | dns.flags.AD
    return clone


def is_loopback(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 (not loopback in 3.11)
    return address.is_loopback


async def reverse_name(resolver: dns.asyncresolver.Resolver | None, ip: str) -> str | None:
    """The PTR name of ``ip`` without the final dot, or None. Loopback is never looked up."""
    if resolver is None or is_loopback(ip):
        return None
    try:
        answer = await resolver.resolve(dns.reversename.from_address(ip), "PTR")
    except (dns.exception.DNSException, ValueError):
        return None
    for record in answer:
        return str(record).rstrip(".")
    return None
