"""Abuse controls that count: connections per client address, message rates per address and
per authenticated user, and the command rate of one session.

Every count lives in this process. ``pigeon serve`` runs one worker per core and the kernel
spreads a client's connections among them, so each worker counts what it sees: with N
workers a client may get up to N times a rate before every worker refuses it. Nothing is
shared through files or another process, which keeps the checks at memory speed.

Rates are token buckets: "30/minute" lets a client send 30 messages at once, then one every
two seconds as the bucket fills again, so a burst is allowed and a steady flood is not.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

from pigeon.config import Limits, Rate, parse_rate
from pigeon.smtp import Reply, replies

__all__ = ["ClientLimits", "CommandRate", "RateLimiter"]

Clock = Callable[[], float]

# Buckets of clients that have gone quiet are dropped when there are more than this many;
# a full bucket says nothing that a missing one does not.
_MAX_BUCKETS = 100_000


class RateLimiter:
    """Token buckets keyed by ``("ip", address)``, ``("user", name)`` or any other pair."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # key: (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, *checks: tuple[tuple[str, str], Rate]) -> bool:
        """Take one token from each bucket named, if every one has a token; else none."""
        now = self._clock()
        levels = [self._level(key, rate, now) for key, rate in checks]
        if any(level < 1.0 for level in levels):
            return False
        for (key, _rate), level in zip(checks, levels, strict=True):
            self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > _MAX_BUCKETS:
            self._forget_full(now, dict(checks))
        return True

    def has_token(self, key: tuple[str, str], rate: Rate) -> bool:
        return self._level(key, rate, self._clock()) >= 1.0

    def _level(self, key: tuple[str, str], rate: Rate, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(rate.count), now))
        refilled = tokens + max(now - then, 0.0) * rate.count / rate.seconds
        return min(refilled, float(rate.count))

    def _forget_full(self, now: float, rates: dict[tuple[str, str], Rate]) -> None:
        # Buckets do not remember their rate; one that was last touched longer ago than the
        # longest period in use has refilled whatever its rate.
        longest = max(rate.seconds for rate in rates.values())
        for key, (_tokens, then) in list(self._buckets.items()):
            if now - then >= longest:
                del self._buckets[key]


class ClientLimits:
    """The per-client limits of one worker (see the module's notes on workers).

    ``is_exempt(address)`` names clients no per-address control applies to: the trusted
    networks, as Postfix exempts $mynetworks from its anvil limits.
    """

    def __init__(
        self,
        limits: Limits,
        *,
        is_exempt: Callable[[str], bool] = lambda address: False,
        clock: Clock = time.monotonic,
    ) -> None:
        self._per_ip = limits.connections_per_ip
        self._ip_rate = parse_rate(limits.message_rate_per_ip, "limits.message_rate_per_ip")
        self._user_rate = parse_rate(limits.message_rate_per_user, "limits.message_rate_per_user")
        self._is_exempt = is_exempt
        self._connections: Counter[str] = Counter()
        self.rates = RateLimiter(clock=clock)

    def open_connection(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) when it has too many."""
        limited = self._per_ip and not self._is_exempt(address)
        if limited and self._connections[address] >= self._per_ip:
            return False
        self._connections[address] += 1
        return True

    def close_connection(self, address: str) -> None:
        self._connections[address] -= 1
        if self._connections[address] <= 0:
            del self._connections[address]

    def connections_from(self, address: str) -> int:
        return self._connections[address]

    def check_message(self, address: str, user: str | None = None) -> Reply | None:
        """At MAIL: None to go on, or the 450 4.7.1 for a client (or, once authenticated, a
        user) over its message rate. ``user`` is the authenticated identity, or None."""
        checks: list[tuple[tuple[str, str], Rate]] = []
        if self._ip_rate is not None and not self._is_exempt(address):
            checks.append((("ip", address), self._ip_rate))
        if self._user_rate is not None and user is not None:
            checks.append((("user", user), self._user_rate))
        if not checks or self.rates.allow(*checks):
            return None
        kind, name = next(key for key, rate in checks if not self.rates.has_token(key, rate))
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
