"""Local delivery: one message for one recipient into a Maildir.

The protocol is the one at https://cr.yp.to/proto/maildir.html, which mutt, Dovecot and
Python's :class:`mailbox.Maildir` all read:

1. create a file in ``tmp/`` and write the message into it;
2. fsync the file, so its bytes are on disk before any name in ``new/`` points at them;
3. ``link()`` it into ``new/`` (a reader never sees a half-written message, because the name
   appears atomically and only once the content is complete);
4. fsync ``new/``, so the new name itself survives a power cut;
5. remove the name in ``tmp/``.

Only after step 4 do we report the recipient as delivered, which is what allows the queue to
forget it (DESIGN.md: nothing acknowledged is ever lost). A batch (``deliver_many``) takes
each step for every message before the next step for any: all files written, all synced,
all linked, and ``new/`` synced once, so that the file system commits its journal once for
the syncs and once for the names, not once per message.

Idempotence. The queue redelivers after a crash, so the name in ``new/`` is not random as the
Maildir page suggests but deterministic: ``<arrival seconds>.<unique>.<hostname>``, where
``unique`` is given by the queue per (message, recipient). A second delivery of the same
recipient then collides in ``link()`` (which, unlike ``rename()``, never replaces a file) and
is reported as already delivered. A mail reader may have moved the first copy from ``new/`` to
``cur/`` meanwhile; the queue asks us to look there too (``check_existing=True``) when it
recovers from a crash, where a duplicate is possible, and not on the ordinary path, where the
extra directory scan would be wasted.

The agent is plain blocking code meant for a worker thread; it keeps no state between calls
besides its settings, so one instance may serve many threads at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pigeon.delivery.result import BodySource, DeliveryResult, MaildirItem, Outcome
from pigeon.queue.envelope import Envelope

__all__ = ["DEFAULT_CHUNK_SIZE", "MaildirAgent", "MaildirItem"]

_log = logging.getLogger(__name__)

# Big enough that a multi-MiB message costs few system calls, small enough that a worker
# thread never holds more than this much of a message in memory.
DEFAULT_CHUNK_SIZE: Final = 64 * 1024

# The Maildir page asks for 0700 directories and 0600 files: a mailbox is private.
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600

# ``unique`` lands in a file name that mail readers parse: "/" would leave the directory, ":"
# starts the flags ("info") part, "," starts Dovecot's extension fields (",S=<size>"), and a
# NUL ends the name. Allowing only this set keeps every reader's parse the same as ours, and
# keeps "<base>," and "<base>:" unambiguous prefixes (see _is_same_message).
_UNIQUE_RE: Final = re.compile(r"[A-Za-z0-9._=+-]{1,200}")

# Characters that would break out of the header line we write an address into.
_HEADER_BREAKERS: Final = re.compile(r"[\r\n\x00]")

# How the Maildir page says to make a host name safe in a file name ("/" and ":"), plus ","
# for the reason given above _UNIQUE_RE. The octal form is the one the page uses.
_HOSTNAME_ESCAPES: Final = {ord("/"): r"\057", ord(":"): r"\072", ord(","): r"\054"}

# Separators that may follow our base name in a file name written by someone else: ":" starts
# the info part (":2,S"), "," starts Dovecot's fields ("<base>,S=1234:2,S").
_NAME_SEPARATORS: Final = (":", ",")


class _TmpTag:
    """The end of every tmp name: this process and random bits, drawn once per process (a
    system call per message otherwise), then a counter (next() on a count is atomic under the
    GIL). A forked child draws its own."""

    def __init__(self) -> None:
        self.process = f"P{os.getpid()}R{secrets.token_hex(8)}N"
        self.attempts = itertools.count()


_tmp_tag = _TmpTag()


def _new_tmp_tag() -> None:
    global _tmp_tag
    _tmp_tag = _TmpTag()


os.register_at_fork(after_in_child=_new_tmp_tag)


@dataclass(frozen=True, slots=True)
class _Staged:
    fd: int
    tmp_path: str
    new_path: str
    maildir: Path
    recipient: str


def _start_writeback(fd: int) -> None:
    """Ask Linux to start writing the file out now (sync_file_range WRITE), without waiting;
    where that call does not exist, the fsync that follows does all the work."""
    if _sync_file_range is None:
        return
    _sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), _SYNC_FILE_RANGE_WRITE)


def _load_sync_file_range() -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    return function


_SYNC_FILE_RANGE_WRITE: Final = 2  # from <fcntl.h>
_sync_file_range = _load_sync_file_range()


class _SpoolReadError(Exception):
    """Reading the message failed: the queue's problem, not the mailbox's."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(cause)
        self.cause = cause


class _CrlfToLf:
    """Turn SMTP's CRLF line ends into LF, one chunk at a time.

    The result is exactly ``data.replace(b"\\r\\n", b"\\n")`` over the whole stream: a CR at
    the end of a chunk is held back until the next chunk shows whether an LF follows, so a
    CRLF that straddles two chunks is still found. A bare CR or bare LF passes unchanged: it is
    part of the message as the client sent it, and "fixing" it would change signed content.
    """

    __slots__ = ("_held_cr",)

    def __init__(self) -> None:
        self._held_cr = False

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
        self._held_cr = data.endswith(b"\r")
        if self._held_cr:
            data = data[:-1]
        return data.replace(b"\r\n", b"\n")

    def flush(self) -> bytes:
        held, self._held_cr = self._held_cr, False
        return b"\r" if held else b""


class MaildirAgent:
    """Deliver messages into Maildirs; see the module docstring for the protocol.

    ``hostname`` is the right-hand part of every file name (escaped as the Maildir page says).
    ``fsync=False`` skips every fsync: only for tests and throw-away mailboxes, since it breaks
    the promise that a delivered message survives a power cut. ``chunk_size`` is how much of a
    message is read and written at a time.
    """

    __slots__ = ("_chunk_size", "_fsync", "_hostname")

    def __init__(
        self, *, hostname: str, fsync: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        if not hostname or any(ord(c) < 0x20 or c == "\x7f" for c in hostname):
            raise ValueError(f"hostname must be non-empty and printable: {hostname!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive: {chunk_size}")
        self._hostname = hostname.translate(_HOSTNAME_ESCAPES)
        self._fsync = fsync
        self._chunk_size = chunk_size

    def file_name(self, *, envelope: Envelope, unique: str) -> str:
        """The name the message gets in ``new/`` (and, before the ":2," part, in ``cur/``).

        It depends only on its arguments, never on the clock or the process, so that a
        redelivery after a crash finds the earlier copy. ``envelope.received_at`` gives the
        left part; it is the arrival time, which the Maildir page's "result of time()" was
        always a stand-in for.
        """
        if not _UNIQUE_RE.fullmatch(unique):
            raise ValueError(f"unique must match {_UNIQUE_RE.pattern}: {unique!r}")
        seconds = max(0, int(envelope.received_at))
        return f"{seconds}.{unique}.{self._hostname}"

    def deliver(
        self,
        maildir: Path,
        body: BodySource,
        *,
        recipient: str,
        envelope: Envelope,
        unique: str,
        check_existing: bool = False,
        sync_dir: bool = True,
    ) -> DeliveryResult:
        """Write ``body`` for ``recipient`` into ``maildir`` and say how it went.

        ``body`` is the message as SMTP carried it (CRLF line ends, dot-unstuffed), read from
        its current position to its end in chunks. Problems with the mailbox or the disk come
        back as a DEFERRED or FAILED result, never as an exception; a bad ``unique`` is the
        caller's bug and raises ValueError. Whatever happens, no file is left in ``tmp/`` and
        nothing incomplete appears in ``new/``.

        With ``sync_dir=False`` the caller promises to call ``sync_new_dirs`` for this
        Maildir before it takes the result as final: a batch of deliveries then shares one
        fsync of each ``new/`` directory instead of paying one each.
        """
        item = MaildirItem(maildir, body, recipient, envelope, unique, check_existing)
        staged = self._stage(item)
        if isinstance(staged, DeliveryResult):
            return staged
        result = self._complete(staged)
        if sync_dir and result.outcome is Outcome.DELIVERED:
            failure = self.sync_new_dirs([maildir])[maildir]
            if failure is not None:
                return _result(recipient, failure.outcome, failure.status, failure.detail)
        return result

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]:
        """``deliver`` for a batch, sharing the expensive part: every message is written
        first, the kernel is asked to start writing them all out, and only then is each
        synced, so that one journal commit can cover the lot (on ext4, measured: about a
        third of the cost of fsyncing each file as it is written). As with
        ``sync_dir=False``, the caller then calls ``sync_new_dirs``."""
        results: list[DeliveryResult | None] = [None] * len(items)
        staged: list[tuple[int, _Staged]] = []
        try:
            for position, item in enumerate(items):
                outcome = self._stage(item)
                if isinstance(outcome, DeliveryResult):
                    results[position] = outcome
                else:
                    staged.append((position, outcome))
        except BaseException:
            for _, entry in staged:  # a bug upstream: raise it, but leave no litter
                self._abandon(entry.fd, entry.tmp_path)
            raise
        if self._fsync:
            for _, entry in staged:
                _start_writeback(entry.fd)
            # Every file synced before any is linked: the first fsync commits one journal
            # transaction holding all of them, and the others find nothing left to do. A
            # link between two fsyncs would dirty the directory again and cost the next
            # fsync a journal commit of its own (ext4: one commit per batch, not per file).
            synced: list[tuple[int, _Staged]] = []
            for position, entry in staged:
                failure = self._sync(entry)
                if failure is None:
                    synced.append((position, entry))
                else:
                    results[position] = failure
            staged = synced
        for position, entry in staged:
            results[position] = self._complete(entry, synced=True)
        return [r for r in results if r is not None]

    def _stage(self, item: MaildirItem) -> DeliveryResult | _Staged:
        """Steps 1 and the checks: the message written into tmp/ (not yet synced)."""
        recipient, envelope, maildir = item.recipient, item.envelope, item.maildir
        base = self.file_name(envelope=envelope, unique=item.unique)
        # The addresses go into header lines; a CR or LF would let one of them inject headers
        # into the user's mailbox. The SMTP parser should never let one through, so this is
        # a last line of defence, and a permanent failure because a retry cannot cure it.
        if _HEADER_BREAKERS.search(recipient):
            return _result(recipient, Outcome.FAILED, "5.1.3", "recipient address not usable")
        if _HEADER_BREAKERS.search(envelope.sender):
            return _result(recipient, Outcome.FAILED, "5.1.7", "sender address not usable")
        # Encoded as UTF-8: an SMTPUTF8 address is kept as the client sent it.
        header = f"Return-Path: <{envelope.sender}>\nDelivered-To: {recipient}\n".encode()
        # Joined as strings, at half the cost of pathlib's joins: this runs for every copy.
        tmp_dir = os.path.join(maildir, "tmp")
        # The tmp name starts with the final name followed by "," (which neither unique nor
        # the escaped host name can contain) so that recovery can find leftovers of this very
        # delivery, and ends with something random so that it never collides with them.
        tmp_path = os.path.join(tmp_dir, f"{base},{_tmp_tag.process}{next(_tmp_tag.attempts)}")
        fd = -1
        step = ""
        try:
            if item.check_existing:
                # Leftovers first: an attempt killed between link() and unlinking its tmp
                # name left both, and the copy in new/ ends this delivery just below.
                step = "remove leftovers in tmp/"
                _remove_leftovers(tmp_dir, base)
                step = "look for an earlier delivery"
                if self._already_delivered(maildir, base):
                    return _result(recipient, Outcome.DELIVERED, "2.0.0", "already delivered")
            step = "create a file in tmp/"
            fd = self._create_tmp(maildir, tmp_path)
            step = "write to tmp/"
            self._write(fd, header, item.body)
        except _SpoolReadError as exc:
            _log.warning("maildir %s: cannot read message for %s: %s", maildir, recipient, exc)
            self._abandon(fd, tmp_path)
            return _result(
                recipient,
                Outcome.DEFERRED,
                "4.3.0",
                f"cannot read the queued message: {_strerror(exc.cause)}",
            )
        except OSError as exc:
            _log.warning("maildir %s: %s for %s failed: %s", maildir, step, recipient, exc)
            self._abandon(fd, tmp_path)
            return _failure(recipient, step, exc)
        except BaseException:
            self._abandon(fd, tmp_path)  # a bug upstream: raise it, but leave no litter
            raise
        return _Staged(fd, tmp_path, os.path.join(maildir, "new", base), maildir, recipient)

    def _sync(self, staged: _Staged) -> DeliveryResult | None:
        """Step 2 alone, for a batch; on failure the tmp file is gone and the result says
        why."""
        try:
            os.fsync(staged.fd)
        except OSError as exc:
            _log.warning(
                "maildir %s: sync the file for %s failed: %s", staged.maildir, staged.recipient, exc
            )
            self._abandon(staged.fd, staged.tmp_path)
            return _failure(staged.recipient, "sync the file", exc)
        return None

    def _complete(self, staged: _Staged, *, synced: bool = False) -> DeliveryResult:
        """Steps 2 (unless ``synced``), 3 and 5: sync the file, link it into new/, remove
        the tmp name."""
        recipient, maildir = staged.recipient, staged.maildir
        step = "sync the file"
        try:
            if self._fsync and not synced:
                os.fsync(staged.fd)
            step = "link into new/"
            already = self._link(maildir, staged.tmp_path, staged.new_path)
        except OSError as exc:
            _log.warning("maildir %s: %s for %s failed: %s", maildir, step, recipient, exc)
            return _failure(recipient, step, exc)
        finally:
            self._abandon(staged.fd, staged.tmp_path)
        # When the link already existed, new/ is synced all the same (sync_new_dirs): the
        # attempt that made it may have died before its sync, and "delivered" must mean
        # "on disk".
        if already:
            return _result(recipient, Outcome.DELIVERED, "2.0.0", "already delivered")
        return _result(recipient, Outcome.DELIVERED, "2.0.0", "delivered to maildir")

    @staticmethod
    def _abandon(fd: int, tmp_path: str) -> None:
        """Close the tmp file and remove its name (the message lives on in new/, if linked)."""
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            _unlink_quietly(tmp_path)

    # -- steps ------------------------------------------------------------------------------

    def _create_tmp(self, maildir: Path, tmp_path: str) -> int:
        # O_EXCL: the name is ours alone. O_NOFOLLOW: a symlink planted in tmp/ cannot send
        # the message somewhere else. Creating first and making directories only on ENOENT
        # (as Postfix does) keeps the common case at one system call.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(tmp_path, flags, _FILE_MODE)
        except FileNotFoundError:
            self._make_maildir(maildir)
            return os.open(tmp_path, flags, _FILE_MODE)

    def _write(self, fd: int, header: bytes, body: BodySource) -> None:
        """Write the message into ``fd``, which stays open (and unsynced) for the caller."""
        # Straight to the descriptor: a file object would cost three system calls to set up,
        # and a message of one chunk goes out in one write with its header.
        converter = _CrlfToLf()
        pending = header
        while True:
            try:
                chunk = body.read(self._chunk_size)
            except OSError as exc:
                raise _SpoolReadError(exc) from exc
            if not chunk:
                break
            pending += converter.feed(chunk)
            _write_all(fd, pending)
            pending = b""
        _write_all(fd, pending + converter.flush())

    def _link(self, maildir: Path, tmp_path: str, new_path: str) -> bool:
        """Give the message its name in new/; True if that name was already taken."""
        try:
            try:
                os.link(tmp_path, new_path)
            except FileNotFoundError:
                # new/ vanished while we wrote (or was never there although tmp/ was).
                self._make_maildir(maildir)
                os.link(tmp_path, new_path)
        except FileExistsError:
            # Only a delivery with the same (arrival, unique, host) makes this name, and the
            # queue gives each recipient of each message its own unique: this is our message.
            return True
        return False

    def sync_new_dirs(self, maildirs: Iterable[Path]) -> dict[Path, DeliveryResult | None]:
        """fsync ``new/`` of each Maildir; per Maildir None, or the failure to report
        (for ``recipient`` fill in by the caller) when the sync failed."""
        outcome: dict[Path, DeliveryResult | None] = {}
        for maildir in maildirs:
            try:
                self._fsync_dir(maildir / "new")
            except OSError as exc:
                _log.warning("maildir %s: sync new/ failed: %s", maildir, exc)
                outcome[maildir] = _failure("", "sync new/", exc)
            else:
                outcome[maildir] = None
        return outcome

    def _already_delivered(self, maildir: Path, base: str) -> bool:
        # new/ first, then cur/: a reader moves messages from new/ to cur/ and never back,
        # and nobody but us puts this name in new/. So a message that is in neither place
        # when looked at in this order was not delivered, however the reader moves it
        # meanwhile; the other order could miss one moved between the two looks.
        if os.path.lexists(maildir / "new" / base):
            self._fsync_dir(maildir / "new")  # see the comment before "sync new/" in deliver
            return True
        try:
            with os.scandir(maildir / "cur") as entries:
                return any(_is_same_message(entry.name, base) for entry in entries)
        except FileNotFoundError:
            return False

    def _make_maildir(self, maildir: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            self._make_dir(maildir / sub)

    def _make_dir(self, path: Path) -> None:
        """``mkdir -p`` that also makes each new directory entry durable."""
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            if path.is_dir():  # there already, or another thread got there first
                return
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), os.fspath(path)
            ) from None
        except FileNotFoundError:
            if path.parent == path:
                raise
            self._make_dir(path.parent)
            self._make_dir(path)
            return
        # A directory created but not yet recorded in its parent is lost in a power cut, and
        # with it any message linked into it afterwards.
        self._fsync_dir(path.parent)

    def _fsync_dir(self, path: Path) -> None:
        if not self._fsync:
            return
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:
            # A few file systems cannot fsync a directory and say EINVAL; there is nothing
            # more we can do on them, and refusing all mail would not make it safer.
            if exc.errno != errno.EINVAL:
                raise
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _is_same_message(name: str, base: str) -> bool:
    if not name.startswith(base):
        return False
    rest = name[len(base) :]
    return not rest or rest.startswith(_NAME_SEPARATORS)


def _remove_leftovers(tmp_dir: str, base: str) -> None:
    # A crash between creating the tmp file and removing it leaves it behind; readers ignore
    # tmp/, so it only wastes space, but a mailbox that crashes often would fill up with them.
    # The queue never runs two deliveries of one unique at once, so any file with our prefix
    # belongs to a dead attempt.
    prefix = base + ","
    try:
        with os.scandir(tmp_dir) as entries:
            stale = [entry.path for entry in entries if entry.name.startswith(prefix)]
    except FileNotFoundError:
        return
    for path in stale:
        _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    # Cleanup must never turn a delivery (or its failure report) into an exception; a leftover
    # in tmp/ is harmless to readers, and the next recovery removes it.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        _log.warning("cannot remove %s: %s", path, exc)


def _failure(recipient: str, step: str, exc: OSError) -> DeliveryResult:
    """Map a file-system error to a result (the one place where that is decided).

    Everything here is DEFERRED. Postfix's local(8) bounces (5.2.0) most maildir errors,
    because there the Maildir is in the user's home and only the user can repair it; its
    virtual(8), whose maildirs the mail administrator owns, defers them instead (4.2.0), since
    the administrator will fix the mistake and the queue bounces at expiry anyway. Pigeon's
    mailbox paths come from its own directory, configured by the administrator, so it follows
    virtual(8): a mailbox path that exists but is not a directory is a configuration error,
    and bouncing would lose mail that a fix would have delivered.
    """
    code = exc.errno
    reason = _strerror(exc)
    if code in (errno.EDQUOT, errno.EFBIG):
        # RFC 3463 X.2.2: the user's quota; the user can make room, so it is worth waiting.
        # (Postfix bounces these with 5.2.2; Pigeon lets the queue's lifetime decide.)
        return _result(recipient, Outcome.DEFERRED, "4.2.2", f"mailbox full ({reason})")
    if code == errno.ENOSPC:
        # RFC 3463 X.3.1: the file system itself is full, which is ours to fix, not the user's.
        return _result(recipient, Outcome.DEFERRED, "4.3.1", f"mail system full ({reason})")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ELOOP):
        return _result(
            recipient,
            Outcome.DEFERRED,
            "4.2.0",
            f"mailbox is not a usable Maildir ({step}: {reason})",
        )
    return _result(
        recipient, Outcome.DEFERRED, "4.3.0", f"maildir delivery failed ({step}: {reason})"
    )


def _strerror(exc: OSError) -> str:
    # strerror alone, without the path: the detail may reach the sender in a bounce, and the
    # layout of our disks is none of their business (the log has the path).
    if exc.strerror:
        return exc.strerror
    if exc.errno:
        return os.strerror(exc.errno)
    return "input/output error"


def _result(recipient: str, outcome: Outcome, status: str, detail: str) -> DeliveryResult:
    return DeliveryResult(recipient=recipient, outcome=outcome, status=status, detail=detail)
