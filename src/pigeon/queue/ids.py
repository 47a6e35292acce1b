"""Queue ids: short, unique across processes and restarts, sorted roughly by time.

A queue id is 18 characters of Crockford base 32 (``0-9`` and ``A-Z`` without ``I L O U``,
so it reads aloud and survives a log search without case trouble)::

    TTTTTTTTTTT PPPPP RR
    │           │     └ 10 random bits: guard against a clock stepped back across a restart
    │           └ 25 bits of the process id (Linux pid_max is at most 2**22)
    └ 55 bits of microseconds since the Unix epoch (good until the year 3111)

Why it is unique:

* within a process, the time field strictly increases: if the clock has not moved (or moved
  back) since the last id, the last value plus one microsecond is used instead;
* between processes alive at the same time, the pid field differs;
* a later process that reuses a pid starts later, so its times are larger, unless the clock
  was stepped back; then the random bits make a clash unlikely (1 in 1024 per microsecond
  that both processes happened to use).

The alphabet is in ASCII order and every field has a fixed width, so ids sort as their
creation times do, like Postfix's long queue ids (``enable_long_queue_ids``).
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Final

__all__ = ["QUEUE_ID_LENGTH", "new_queue_id", "queue_id_time"]

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE: Final = {c: i for i, c in enumerate(_ALPHABET)}
_TIME_CHARS: Final = 11
_PID_CHARS: Final = 5
_RANDOM_CHARS: Final = 2
QUEUE_ID_LENGTH: Final = _TIME_CHARS + _PID_CHARS + _RANDOM_CHARS

_clock = time.time_ns  # a module attribute so that tests can stop or turn back the clock
_lock = threading.Lock()
_last_us = 0


# Every pair of characters, by the ten bits they stand for: half the steps per id.
_PAIRS: Final = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode(value: int, width: int) -> str:
    parts = []
    for _ in range(width >> 1):
        parts.append(_PAIRS[value & 1023])
        value >>= 10
    if width & 1:
        parts.append(_ALPHABET[value & 31])
    return "".join(reversed(parts))


def new_queue_id() -> str:
    """Return a new queue id, unique among all ids made on this host."""
    global _last_us
    now = _clock() // 1000
    with _lock:
        if now <= _last_us:
            now = _last_us + 1
        _last_us = now
    # The random bits need no secrecy, only variety between processes: the random module
    # (reseeded in every forked child) draws them without a system call each.
    return (
        _encode(now, _TIME_CHARS)
        + _pid_field
        + _encode(random.getrandbits(5 * _RANDOM_CHARS), _RANDOM_CHARS)
    )


def _pid_field_now() -> str:
    return _encode(os.getpid() & ((1 << (5 * _PID_CHARS)) - 1), _PID_CHARS)


def _new_pid_field() -> None:
    global _pid_field
    _pid_field = _pid_field_now()


# The pid field, made once per process: a forked child makes its own, so that it never
# reuses its parent's.
_pid_field = _pid_field_now()
os.register_at_fork(after_in_child=_new_pid_field)


def queue_id_time(queue_id: str) -> float:
    """Return the creation time (Unix seconds) encoded in ``queue_id``.

    Raises ``ValueError`` if ``queue_id`` is not a queue id.
    """
    if len(queue_id) != QUEUE_ID_LENGTH:
        raise ValueError(f"not a queue id: {queue_id!r}")
    value = 0
    for c in queue_id[:_TIME_CHARS]:
        digit = _DECODE.get(c)
        if digit is None:
            raise ValueError(f"not a queue id: {queue_id!r}")
        value = value * 32 + digit
    return value / 1_000_000
