"""The counts that every worker process of one server shares: connections per client address
and the token buckets of the message rates, so that a limit is the server's and not each
worker's.

Postfix keeps them in one process, anvil, which smtpd asks over a socket. Here the table is a
file in the data directory that every worker maps into memory and changes under an fcntl
lock, held for a few microseconds: no process to ask, no round trip before a greeting, and
the kernel drops the lock of a worker that dies holding it. Each worker also holds a shared
``flock`` on the file for as long as it runs, so that a second server started by mistake on
the same data directory cannot replace the table under the first. A server of one process
keeps the same table in memory of its own, with no file.

The table has a fixed number of slots, each for one key (``ip:192.0.2.1``, ``user:alice``),
found by a hash of the key and a few slots after it. A slot holds the key's digest, its
bucket (tokens left, when they were counted, when the bucket will be full again) and one
connection count per worker, so that a worker which starts (or starts again after dying)
clears its own counts without touching the others'. A slot is free again once no worker
counts a connection in it and its bucket has filled up: it then says nothing that an empty
slot does not. Should every slot near a key be taken (thousands of clients at once), that
key is not counted: the limit lets it through rather than refuse mail for want
of room.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import math
import mmap
import os
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pigeon.config import Rate

__all__ = ["Admission", "Anvil", "AnvilError"]

_MAGIC = b"PGNANVL1"
_HEADER = struct.Struct("<8sII")  # magic, slots, columns (workers)
_HEADER_SIZE = 64
_DIGEST_SIZE = 16
_BUCKET = struct.Struct("<ddd")  # tokens (NaN: full, never taken), counted at, full at
_COUNT = struct.Struct("<I")
_PROBES = 16  # slots looked at for one key: the one its hash names and those after it
DEFAULT_SLOTS = 1 << 15
_FREE = bytes(_DIGEST_SIZE)


class AnvilError(Exception):
    """The table file is not one, has no column for this worker, or is in use."""


class Admission(enum.Enum):
    """What a new connection's count says."""

    REFUSED = "refused"  # the address has as many connections as it may: not counted
    COUNTED = "counted"  # let in and counted: it is to be uncounted when it ends
    UNCOUNTED = "uncounted"  # let in without counting (no limit applies, or no room)


class Anvil:
    """One process's view of the table; ``column`` is its worker's connection count.

    Made by :meth:`create` (a file, for the workers of one server, which each
    :meth:`open` it) or :meth:`private` (this process only). Used from one thread: the lock
    is between processes only.
    """

    def __init__(
        self,
        memory: mmap.mmap,
        fd: int | None,
        column: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        magic, slots, columns = _HEADER.unpack_from(memory, 0)
        if magic != _MAGIC:
            raise AnvilError("not a table of client counts")
        if not 0 <= column < columns:
            raise AnvilError(f"the table has no column {column} (it has {columns})")
        if slots < 1 or len(memory) < _table_size(slots, columns):
            raise AnvilError("the table is damaged: its header does not match its size")
        self._memory = memory
        self._fd = fd
        self._slots = slots
        self._columns = columns
        self._column = column
        self._counts = struct.Struct(f"<{columns}I")
        self._slot_size = _slot_size(columns)
        self._mine = _COUNTS_AT + _COUNT.size * column  # this worker's count, in a slot
        # time.monotonic is the system's CLOCK_MONOTONIC: the same in every worker.
        self._clock = clock

    # -- making and opening -----------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, *, columns: int, slots: int = DEFAULT_SLOTS) -> None:
        """Write an empty table for ``columns`` workers at ``path``, replacing any (the
        counts of a server that has stopped mean nothing to the next). Raises
        :class:`AnvilError` if the workers of a running server have it open."""
        try:
            old = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            old = None
        try:
            if old is not None:
                try:
                    fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise AnvilError(
                        f"{path} is in use: a server already runs on this data directory"
                    ) from None
            cls._write_empty(path, columns=columns, slots=slots)
        finally:
            if old is not None:
                os.close(old)

    @staticmethod
    def _write_empty(path: Path, *, columns: int, slots: int) -> None:
        temporary = path.with_name(f".{path.name}.new")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _table_size(slots, columns))  # zeros, without writing them
            os.pwrite(fd, _HEADER.pack(_MAGIC, slots, columns), 0)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    @classmethod
    def open(cls, path: Path, *, column: int, clock: Callable[[], float] = time.monotonic) -> Anvil:
        """Map the table at ``path`` and clear ``column``: what a worker of that number
        counted before it (died and) started again is over."""
        fd = os.open(path, os.O_RDWR)
        try:
            # Held until the worker ends (the kernel lets go of it then): the table is in use.
            fcntl.flock(fd, fcntl.LOCK_SH)
            memory = mmap.mmap(fd, 0)
            anvil = cls(memory, fd, column, clock=clock)
        except (OSError, ValueError, struct.error, AnvilError) as error:
            os.close(fd)
            raise AnvilError(f"{path}: {error}") from None
        anvil._clear_column()
        return anvil

    @classmethod
    def private(
        cls, *, slots: int = DEFAULT_SLOTS, clock: Callable[[], float] = time.monotonic
    ) -> Anvil:
        """A table for this process alone (one server process, or a test)."""
        memory = mmap.mmap(-1, _table_size(slots, 1))
        _HEADER.pack_into(memory, 0, _MAGIC, slots, 1)
        return cls(memory, None, 0, clock=clock)

    def close(self) -> None:
        self._memory.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- connections --------------------------------------------------------------------------
    def connect(self, key: str, limit: int) -> Admission:
        """Count a connection of ``key`` unless the server counts ``limit`` of them already
        (0: no limit). Only a COUNTED one is to be :meth:`disconnect`-ed."""
        self._lock()
        try:
            at = self._find(key, create=True)
            if at is None:
                return Admission.UNCOUNTED
            counts = self._counts.unpack_from(self._memory, at + _COUNTS_AT)
            if limit and sum(counts) >= limit:
                return Admission.REFUSED
            _COUNT.pack_into(self._memory, at + self._mine, counts[self._column] + 1)
            return Admission.COUNTED
        finally:
            self._unlock()

    def disconnect(self, key: str) -> None:
        """One connection of ``key`` that this worker counted is over."""
        if self._memory.closed:
            return  # a session that ends as its server stops, after the table was let go
        self._lock()
        try:
            at = self._find(key, create=False)
            if at is None:
                return
            (count,) = _COUNT.unpack_from(self._memory, at + self._mine)
            _COUNT.pack_into(self._memory, at + self._mine, max(count - 1, 0))
        finally:
            self._unlock()

    def connections(self, key: str) -> int:
        """The connections of ``key`` counted by every worker."""
        self._lock()
        try:
            at = self._find(key, create=False)
            return 0 if at is None else sum(self._counts.unpack_from(self._memory, at + _COUNTS_AT))
        finally:
            self._unlock()

    # -- rates --------------------------------------------------------------------------------
    def take(self, checks: Sequence[tuple[str, Rate]]) -> int | None:
        """Take one token from the bucket of each ``(key, rate)``, if every one has a token:
        None. Otherwise none is taken, and the answer is the place in ``checks`` of the
        first without one."""
        now = self._clock()
        self._lock()
        try:
            places: list[int | None] = []
            for key, _rate in checks:
                places.append(self._find(key, create=True, busy=places))
            levels = [
                float(rate.count) if at is None else self._level(at, rate, now)
                for at, (_key, rate) in zip(places, checks, strict=True)
            ]
            for place, level in enumerate(levels):
                if level < 1.0:
                    return place
            for at, (_key, rate), level in zip(places, checks, levels, strict=True):
                if at is not None:
                    left = level - 1.0
                    full_at = now + (rate.count - left) * rate.seconds / rate.count
                    _BUCKET.pack_into(self._memory, at + _DIGEST_SIZE, left, now, full_at)
            return None
        finally:
            self._unlock()

    def tokens(self, key: str, rate: Rate) -> float:
        """What the bucket of ``key`` holds now."""
        self._lock()
        try:
            at = self._find(key, create=False)
            return float(rate.count) if at is None else self._level(at, rate, self._clock())
        finally:
            self._unlock()

    def _level(self, at: int, rate: Rate, now: float) -> float:
        tokens: float
        then: float
        tokens, then, _full_at = _BUCKET.unpack_from(self._memory, at + _DIGEST_SIZE)
        if math.isnan(tokens):
            return float(rate.count)
        refilled = tokens + max(now - then, 0.0) * rate.count / rate.seconds
        return min(refilled, float(rate.count))

    # -- slots ----------------------------------------------------------------------------------
    def _find(self, key: str, *, create: bool, busy: Sequence[int | None] = ()) -> int | None:
        """The offset of ``key``'s slot; with ``create``, a slot is taken for a key that has
        none (None if every slot it may use is busy). ``busy``: slots taken for other keys
        of the same operation, which look free until it writes them."""
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=_DIGEST_SIZE).digest()
        size = self._slot_size
        first = _HEADER_SIZE + int.from_bytes(digest[:8], "little") % self._slots * size
        end = first + _PROBES * size
        memory = self._memory
        # The digest searched for in C over the whole window; a match not at a slot's start
        # (the digest's bytes inside another field) is passed over.
        at = memory.find(digest, first, end)
        while at >= 0:
            if (at - first) % size == 0:
                return at
            at = memory.find(digest, at + 1, end)
        if not create:
            return None
        now = self._clock()
        for at in range(first, end, size):
            if at not in busy and self._reusable(at, now):
                memory[at : at + _DIGEST_SIZE] = digest
                _BUCKET.pack_into(memory, at + _DIGEST_SIZE, math.nan, 0.0, 0.0)
                self._counts.pack_into(memory, at + _COUNTS_AT, *([0] * self._columns))
                return at
        return None

    def _reusable(self, at: int, now: float) -> bool:
        memory = self._memory
        if memory[at : at + _DIGEST_SIZE] == _FREE:
            return True
        if any(self._counts.unpack_from(memory, at + _COUNTS_AT)):
            return False
        tokens, _then, full_at = _BUCKET.unpack_from(memory, at + _DIGEST_SIZE)
        # A bucket never taken from, or full again by now: the slot says nothing.
        return math.isnan(tokens) or now >= full_at

    def _clear_column(self) -> None:
        self._lock()
        try:
            memory = self._memory
            offset = _HEADER_SIZE + self._mine
            for _ in range(self._slots + _PROBES):
                _COUNT.pack_into(memory, offset, 0)
                offset += self._slot_size
        finally:
            self._unlock()

    def _lock(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def _unlock(self) -> None:
        if self._fd is not None:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)


_COUNTS_AT = _DIGEST_SIZE + _BUCKET.size


def _slot_size(columns: int) -> int:
    return -(-(_COUNTS_AT + _COUNT.size * columns) // 8) * 8


def _table_size(slots: int, columns: int) -> int:
    # _PROBES slots more than the hash can name: a key's window never wraps around.
    return _HEADER_SIZE + (slots + _PROBES) * _slot_size(columns)
