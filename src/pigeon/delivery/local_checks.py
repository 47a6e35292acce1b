"""Checks before a message is written into a local mailbox: a mail loop, a full mailbox, a
mailbox locked by another program.

Loops (RFC 5321 section 6.3): every local delivery and every forward adds
``Delivered-To: <address>``, so a message coming back to an address it has already reached
carries that address and is stopped (as Postfix's local(8) does), and a message with more
than ``hop_limit`` Received lines has travelled in circles between servers.

Quotas count the octets in the Maildir's ``new/`` and ``cur/``. The sum is kept per Maildir
and taken again only when either directory has changed (its mtime), so a busy mailbox costs
one scan per change, not one per message.

Locks: a program that must keep Pigeon out of a mailbox for a while (a migration, a backup,
an mbox-style writer) holds ``flock(LOCK_EX)`` on ``<maildir>/pigeon.lock``. Pigeon's own
deliveries take it shared and never wait: a locked mailbox answers "busy" (450 4.2.1 at RCPT,
a deferral at delivery) and the queue tries again later.
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from pathlib import Path

__all__ = ["LOCK_NAME", "MailboxLocks", "MailboxUsage", "find_loop", "header_of", "is_locked"]

LOCK_NAME = "pigeon.lock"
_REMEMBERED = 100_000  # mailboxes whose lack of a lock file is remembered

_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
_DELIVERED_TO = re.compile(rb"^delivered-to:[ \t]*(.*?)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


def header_of(message: bytes) -> bytes:
    """The header section of ``message`` (all of it when no blank line ends it)."""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def find_loop(header: bytes, address: str, *, hop_limit: int) -> str | None:
    """Why delivering ``header``'s message to ``address`` would be a loop, or None."""
    hops = len(_RECEIVED.findall(header))
    if hops > hop_limit:
        return f"mail loop: {hops} Received headers (more than {hop_limit} hops)"
    wanted = address.lower()
    for match in _DELIVERED_TO.finditer(header):
        if match.group(1).decode("utf-8", "replace").lower() == wanted:
            return f"mail forwarding loop for {address}"
    return None


class MailboxLocks:
    """``is_locked`` for a busy server: that a mailbox has no lock file at all is remembered
    for a second (looking costs a system call, tens of microseconds on some machines, at
    every RCPT and every delivery), so a program that starts locking a mailbox is noticed
    within a second. Where the file exists, the lock itself is tried every time."""

    def __init__(self, *, recheck: float = 1.0) -> None:
        self._recheck = recheck
        self._unlocked_at: dict[Path, float] = {}  # maildir -> when it had no lock file

    def is_locked(self, maildir: Path) -> bool:
        now = time.monotonic()
        seen = self._unlocked_at.get(maildir)
        if seen is not None and now - seen < self._recheck:
            return False
        if not (maildir / LOCK_NAME).exists():
            if len(self._unlocked_at) > _REMEMBERED:
                self._unlocked_at.clear()
            self._unlocked_at[maildir] = now
            return False
        self._unlocked_at.pop(maildir, None)
        return is_locked(maildir)


def is_locked(maildir: Path) -> bool:
    """Whether another program holds the mailbox's lock (never waits)."""
    try:
        fd = os.open(maildir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False  # no lock file: nobody locks this mailbox
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our shared lock
    return False


class MailboxUsage:
    """Octets stored in Maildirs, remembered until the Maildir changes. Thread-safe."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[tuple[int, int], int]] = {}
        self._lock = threading.Lock()

    def peek(self, maildir: Path) -> int | None:
        """The last sum taken for ``maildir`` (None: never taken), without looking at the
        disk: what the RCPT check uses on the event loop unless the mailbox looks full."""
        with self._lock:
            known = self._known.get(maildir)
        return None if known is None else known[1]

    def of(self, maildir: Path) -> int:
        stamps = (_mtime(maildir / "new"), _mtime(maildir / "cur"))
        with self._lock:
            known = self._known.get(maildir)
            if known is not None and known[0] == stamps:
                return known[1]
        total = _octets(maildir / "new") + _octets(maildir / "cur")
        with self._lock:
            self._known[maildir] = (stamps, total)
        return total


def _mtime(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _octets(path: Path) -> int:
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue  # moved or removed by a mail reader meanwhile
    except OSError:
        return 0
    return total
