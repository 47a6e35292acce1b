"""Where mail for a domain goes: its mail exchangers (RFC 5321 section 5.1, RFC 7505)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.rdatatype
import dns.resolver

__all__ = ["MXError", "MailExchanger", "addresses_of", "resolve_mx", "resolve_mx_authenticated"]


class MXError(Exception):
    """No exchanger can be named for the domain; ``permanent`` says if that is final."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status  # RFC 3463 code for the bounce or result

    @property
    def code(self) -> int:
        return 550 if self.permanent else 451


@dataclass(frozen=True, slots=True)
class MailExchanger:
    host: str
    preference: int


async def resolve_mx(domain: str, resolver: dns.asyncresolver.Resolver) -> list[MailExchanger]:
    """The exchangers of ``domain``, to be tried in order.

    Lowest preference first, with equal preferences shuffled to spread the load; no MX at
    all means the domain itself (the "implicit MX"); a null MX (RFC 7505: one record,
    preference 0, exchange ".") means the domain takes no mail."""
    exchangers, _ = await resolve_mx_authenticated(domain, resolver)
    return exchangers


async def resolve_mx_authenticated(
    domain: str, resolver: dns.asyncresolver.Resolver
) -> tuple[list[MailExchanger], bool]:
    """``resolve_mx``, and whether the resolver vouched for the answer with its AD flag
    (DNSSEC-validated; ask with ``pigeon.dns.authenticating(resolver)``). An address literal
    has no answer to vouch for."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal.upper().startswith("IPV6:"):
            literal = literal[5:]
        return [MailExchanger(literal, 0)], False
    try:
        answer = await resolver.resolve(domain, "MX")
    except dns.resolver.NXDOMAIN:
        raise MXError(f"domain {domain} does not exist", permanent=True, status="5.1.2") from None
    except dns.resolver.NoAnswer as error:
        response = error.kwargs.get("response")
        authentic = response is not None and bool(response.flags & dns.flags.AD)
        return [MailExchanger(domain, 0)], authentic
    except dns.exception.DNSException as error:
        raise MXError(
            f"DNS lookup of MX for {domain} failed: {error}", permanent=False, status="4.4.3"
        ) from None
    records = [(int(r.preference), str(r.exchange).rstrip(".")) for r in answer]
    if any(host == "" for _, host in records):
        raise MXError(
            f"domain {domain} accepts no mail (null MX, RFC 7505)", permanent=True, status="5.1.10"
        )
    random.shuffle(records)  # shuffle, then a stable sort keeps equal preferences shuffled
    records.sort(key=lambda record: record[0])
    authentic = bool(answer.response.flags & dns.flags.AD)
    return [MailExchanger(host, preference) for preference, host in records], authentic


async def addresses_of(host: str, resolver: dns.asyncresolver.Resolver) -> list[str]:
    """IPv6 and IPv4 addresses of an exchanger (empty when it has none)."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    addresses: list[str] = []
    for rdtype in ("AAAA", "A"):
        try:
            answer = await resolver.resolve(host, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException:
            continue
        addresses.extend(str(record) for record in answer)
    return addresses
