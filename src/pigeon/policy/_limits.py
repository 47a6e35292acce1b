"""Abuse controls that count: connections per client address, message rates per address and
per authenticated user, and the command rate of one session.

The counts per address and per user are the server's, whatever its number of workers: they
live in the table every worker shares (``pigeon.policy._anvil``), as Postfix's smtpd
processes share theirs through anvil. The command rate is one session's, counted by it.

Rates are token buckets: "30/minute" lets a client send 30 messages at once, then one every
two seconds as the bucket fills again, so a burst is allowed and a steady flood is not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pigeon.config import Limits, Rate, parse_rate
from pigeon.smtp import Reply, replies

from ._anvil import Admission, Anvil

__all__ = ["ClientLimits", "CommandRate", "RateLimiter"]

Clock = Callable[[], float]


def _key(kind: str, name: str) -> str:
    return f"{kind}:{name}"


class RateLimiter:
    """Token buckets keyed by ``("ip", address)``, ``("user", name)`` or any other pair,
    kept in ``anvil`` (by default one of this process's own)."""

    def __init__(self, *, clock: Clock = time.monotonic, anvil: Anvil | None = None) -> None:
        self._anvil = anvil if anvil is not None else Anvil.private(clock=clock)

    def allow(self, *checks: tuple[tuple[str, str], Rate]) -> bool:
        """Take one token from each bucket named, if every one has a token; else none."""
        return self.refused(*checks) is None

    def refused(self, *checks: tuple[tuple[str, str], Rate]) -> tuple[str, str] | None:
        """``allow``, answering which bucket had no token (None: every one had, and gave)."""
        place = self._anvil.take([(_key(*key), rate) for key, rate in checks])
        return None if place is None else checks[place][0]


class ClientLimits:
    """The per-client limits of the server, counted in ``anvil`` (shared by its workers; by
    default one of this process's own).

    ``is_exempt(address)`` names clients no per-address control applies to: the trusted
    networks, as Postfix exempts $mynetworks from its anvil limits.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        is_exempt: Callable[[str], bool] = lambda address: False,
        clock: Clock = time.monotonic,
        anvil: Anvil | None = None,
    ) -> None:
        self._per_ip = limits.connections_per_ip
        self._ip_rate = parse_rate(limits.message_rate_per_ip, "limits.message_rate_per_ip")
        self._user_rate = parse_rate(limits.message_rate_per_user, "limits.message_rate_per_user")
        self._is_exempt = is_exempt
        self._anvil = anvil if anvil is not None else Anvil.private(clock=clock)
        self.rates = RateLimiter(anvil=self._anvil)

    def open_connection(self, address: str) -> Admission:
        """Count a new connection from ``address``, unless it has too many (REFUSED). An
        address no limit applies to (none set, or exempt) is let in UNCOUNTED."""
        if not self._per_ip or self._is_exempt(address):
            return Admission.UNCOUNTED
        return self._anvil.connect(_key("ip", address), self._per_ip)

    def close_connection(self, address: str) -> None:
        """A connection that ``open_connection`` COUNTED is over."""
        self._anvil.disconnect(_key("ip", address))

    def connections_from(self, address: str) -> int:
        return self._anvil.connections(_key("ip", address))

    def check_message(self, address: str, user: str | None = None) -> Reply | None:
        """At MAIL: None to go on, or the 450 4.7.1 for a client (or, once authenticated, a
        user) over its message rate. ``user`` is the authenticated identity, or None."""
        checks: list[tuple[tuple[str, str], Rate]] = []
        if self._ip_rate is not None and not self._is_exempt(address):
            checks.append((("ip", address), self._ip_rate))
        if self._user_rate is not None and user is not None:
            checks.append((("user", user), self._user_rate))
        if not checks:
            return None
        refused = self.rates.refused(*checks)
        if refused is None:
            return None
        kind, name = refused
        return replies.rate_limited(f"user {name}" if kind == "user" else name)


class CommandRate:
    """The command budget of one session: ``per_minute`` commands, refilled continuously.

    The protocol core has no clock, so the session hands it a whole number of commands
    (``ServerConnection.command_budget``) before each batch and counts what was used after."""

    def __init__(self, per_minute: int, *, clock: Clock = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._capacity = float(per_minute)
        self._tokens = float(per_minute)
        self._clock = clock
        self._then = clock()
        self._granted = 0

    def grant(self, used_budget: int | None) -> int:
        """What is left of the budget last granted is ``used_budget``; return the new one."""
        if used_budget is not None:
            self._tokens -= self._granted - used_budget
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._then) * self._rate)
        self._then = now
        self._granted = max(math.floor(self._tokens), 0)
        return self._granted
