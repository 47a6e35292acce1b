"""Durable acceptance of messages: the spool, with group commit.

The rule this module exists for: the server answers 250 to the end of DATA only after
``await spool.commit(writer, envelope)`` has returned, and ``commit`` returns only once the
message record is on disk and fsynced (the segment file, and the directory too when the
segment file is new). A crash before that loses only mail that was never acknowledged.

Commits that wait at the same moment share one ``fdatasync`` (group commit, as in a
database's write-ahead log): the committer takes every pending record, writes them with one
``pwritev`` (plus a kernel copy for each body that was spilled to a temp file), syncs once,
and only then resolves every waiting future. Commits that arrive while a sync is in flight
gather for the next batch. Postfix creates and fsyncs one file per message; this is where
Pigeon is cheaper.

Preparing segments
==================

Appending to a file makes each sync commit the file system's journal too (the file's size
and its new blocks change); writing over blocks that are already allocated and synced does
not. On ext4 that halves the time of a small ``fdatasync`` and the CPU it costs (databases
zero-fill their log files for the same reason). So after each batch, while the active
segment has less than half its reach prepared ahead of its records, the housekeeping thread
writes zeros after the records and syncs them (:meth:`FileOps.fill_zeros`); the reach is as
far as the records already go, from 256 KiB up to 4 MiB, so that a quiet spool stays small.
Records then land on those zeros. Correctness never depends on this: a record written past
the prepared part is simply appended, a batch that would reach zeros still being written
waits for them (so that they cannot land over its records), and a failed zero-fill only
stops the preparing of that segment.

Layout under the spool root
===========================

``segments/<worker>-<seq:08d>.seg``
    append-only segment files holding records, one active segment per worker at a time; the
    active one ends in zeros prepared for the records to come.
``segments/<worker>-<seq:08d>.done``
    the done list of that segment: one queue id per line, appended by :meth:`Spool.mark_done`
    and never fsynced (a lost line means a duplicate delivery, never a lost message).
``segments/<worker>-<seq:08d>.corrupt``
    a segment whose header was damaged, renamed aside by recovery for a person to inspect.
``tmp/<worker>-<queue id>.tmp``
    bodies larger than the spill threshold while they are being received.
``<worker>.lock``
    held with ``flock`` while a :class:`Spool` of that worker is open: two processes
    appending to or recovering the same segments would deliver mail twice.

Each worker (one per process) owns its segments; ``recover`` reads only its own.

Segment format (all integers big-endian)
========================================

A segment starts with a 20-byte header, then records back to back::

    offset  size  field
    0       8     segment magic  b"\\x89PGNSEG\\n"
    8       8     nonce          random bytes chosen when the segment was created
    16      4     header CRC     CRC-32 of bytes 0..15

Each record::

    offset        size      field
    0             4         record magic   b"\\x89PGR"
    4             2         id_len         length of the queue id
    6             4         env_len        length of the envelope JSON
    10            8         body_len       length of the body
    18            4         head_crc       CRC-32 of nonce + bytes 0..17 + queue id +
                                           envelope (the nonce is not stored in the record)
    22            id_len    queue id       ASCII
    22+id_len     env_len   envelope       UTF-8 JSON, :meth:`Envelope.to_json`
    ...           body_len  body           the bytes given to MessageWriter.write, in order
    ...           4         body_crc       CRC-32 of the body
    ...           4         end marker     b"\\x89END"

Why two CRCs rather than one over the whole record: ``head_crc`` proves the lengths before
recovery trusts them (so a damaged length cannot make recovery skip or cut good records),
and ``body_crc`` is computed as the body streams in, so a spilled body is never read back
to be summed. Why the nonce: after damage, recovery looks for the next record magic; a
body may contain bytes that look like a whole record (an attacker's, with an envelope of
their choosing), but without the segment's nonce nobody can forge a ``head_crc`` that
validates, so no record hidden inside a body is ever taken for a real one.

Failures
========

If a batch's write or sync fails, every commit in that batch raises :class:`SpoolError`
(the server replies 451), the segment is truncated back to where the batch began (or
removed, if the batch created it) and sealed, and the next batch starts a fresh segment.
If even the truncation fails, the refused queue ids are appended to the done list and
fsynced, so recovery skips them: a refused record must never be delivered later.

Recovery
========

:meth:`Spool.recover` (async; run it once after :meth:`Spool.open`, before or while
accepting mail) reads every segment of this worker that existed when the spool was opened,
in order, and checks every record. After the last intact record, bytes that do not form a
valid record (a torn write: the process died before the batch's fsync returned, so none of
it was acknowledged) are truncated away, with a warning; so are prepared zeros that no
record reached, quietly, as they are how the segment active at the last stop ends. A
damaged record with valid records after it is logged as a warning with its segment and
offset and skipped. Records on the done list are skipped, fully done segments are deleted,
and the rest is returned in arrival order. Recovery never raises for damaged data.

Threads
=======

Blocking file work runs on two single-thread executors owned by the spool: one for commits
(and open and recovery), one for done lists and for deleting and preparing segments, so a
``mark_done`` never waits behind a sync.

Two kinds of writes are made by the event loop itself. An unsynced write into the page cache
does not wait for the disk, unless the kernel is throttling a process that has dirtied too
much memory; both kinds are bounded in size, so that such a stall stays short:

* :meth:`MessageWriter.write` appends a spilled body to its temp file in chunks of 256 KiB
  (the call is synchronous by contract);
* a batch of bodies held in memory, at most 1 MiB with its envelopes, going into a segment
  that is already durable, is written by the loop with one ``pwritev``. Its ``fdatasync``
  is then handed to the kernel (Linux AIO, :mod:`pigeon.queue.linuxaio`), whose completion
  comes back through an eventfd. That saves the hand-offs of the GIL between the loop and
  the commit thread that each batch cost otherwise (in the benchmark, a seventh of the CPU
  per message, and a third in the compiled build). The rule is unchanged: no future is
  resolved before that sync succeeds.

A batch that creates a segment (whose directory must be synced too), copies spilled bodies,
or is bigger, and every batch where Linux AIO is not available, goes to the commit thread.

Exceptions
==========

* :class:`SpoolError`: the spool could not do what was asked. From ``commit`` it means the
  message is not stored.
* ``ValueError``: the caller misused a :class:`MessageWriter` (wrote after commit or discard,
  committed twice, or committed a writer of another spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import io
import logging
import os
import re
import secrets
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from pigeon.queue.envelope import Envelope
from pigeon.queue.fileops import FileOps, KernelSyncs
from pigeon.queue.ids import new_queue_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import TracebackType
    from typing import Self

    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "DEFAULT_SEGMENT_LIMIT",
    "DEFAULT_SPILL_THRESHOLD",
    "MAX_ENVELOPE_SIZE",
    "BodyReader",
    "BodyReaders",
    "MessageWriter",
    "Spool",
    "SpoolError",
    "SpooledMessage",
    "spool_workers",
]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_LIMIT: Final = 64 << 20
DEFAULT_SPILL_THRESHOLD: Final = 1 << 20
# Bounds recovery checks before it reads a header's variable part, so that a damaged length
# field cannot make it allocate gigabytes. An envelope of 10,000 recipients fits easily.
MAX_ENVELOPE_SIZE: Final = 16 << 20
_MAX_ID_LEN: Final = 64

SEGMENT_MAGIC: Final = b"\x89PGNSEG\n"
_SEGMENT_HEADER: Final = struct.Struct(">8s8sI")
RECORD_MAGIC: Final = b"\x89PGR"
_RECORD_PREFIX: Final = struct.Struct(">4sHIQ")
_CRC: Final = struct.Struct(">I")
_RECORD_HEADER_SIZE: Final = _RECORD_PREFIX.size + _CRC.size
RECORD_END: Final = b"\x89END"
_RECORD_TRAILER: Final = struct.Struct(">I4s")

_SPILL_CHUNK: Final = 256 << 10  # spilled bodies reach their temp file in writes this big
_IO_CHUNK: Final = 1 << 20  # reads and copies during recovery and fallback copies
_IOV_BATCH: Final = 512  # below every platform's IOV_MAX
# A batch of bodies in memory up to this size is written by the event loop itself, and only
# its sync left to the kernel (see "Threads"). A bigger one is copied on the commit thread,
# where the copy does not hold up every session of the worker.
_LOOP_WRITE_LIMIT: Final = 1 << 20
# The active segment is zero-filled ahead of its records (see "Preparing segments"): as far
# as its records already reach, but at least the first and at most the most of these.
_PREPARE_FIRST: Final = 256 << 10
_PREPARE_MOST: Final = 4 << 20
# io_submit errors that mean "AIO cannot sync this file here", not "the sync failed".
_NO_KERNEL_SYNC: Final = frozenset({errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})
# copy_file_range errors that mean "not here" rather than "the disk failed".
_NO_KERNEL_COPY: Final = frozenset({errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP})

_WORKER: Final = re.compile(r"[A-Za-z0-9_]{1,32}")
_SPOOL_FILE: Final = re.compile(
    r"(?P<worker>[A-Za-z0-9_]+)-(?P<seq>[0-9]{8,})\.(?P<kind>seg|done|corrupt)"
)


class SpoolError(Exception):
    """The spool could not do what was asked; from ``commit``: the message is not stored."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    """A message that is on disk: what ``commit`` returns and ``recover`` finds.

    ``size`` is the body length. ``segment`` (a file name), ``offset`` (where the record
    starts) and ``body_offset`` (where its body starts) locate it for :meth:`Spool.open_body`.
    """

    queue_id: str
    envelope: Envelope
    size: int
    segment: str
    offset: int
    body_offset: int


class BodyReader(io.RawIOBase):
    """A read-only, seekable file over exactly the body bytes of one spooled message.

    It reads the segment with ``pread`` at the body's range, so the body is never copied into
    memory as a whole. Reads block: call them from a thread, or wrap in ``io.BufferedReader``
    for line reads.
    """

    def __init__(self, fd: int, start: int, length: int, *, owns_fd: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self._start = start
        self._length = length
        self._pos = 0
        self._owns_fd = owns_fd  # False: a shared descriptor, closed by its BodyReaders

    @property
    def size(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self.closed:
            raise ValueError("read from a closed body")
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [view[:n]], self._start + self._pos)
        self._pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if self.closed:
            raise ValueError("seek on a closed body")
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._length + offset
        else:
            raise ValueError(f"invalid whence: {whence}")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            try:
                if self._owns_fd:
                    os.close(self._fd)
            finally:
                super().close()


class BodyReaders:
    """Readers for many messages at once, one descriptor per segment shared by all of them
    (made by :meth:`Spool.body_readers`; close it when done, which closes the descriptors).

    Opening a file costs a path lookup that is measurable per message on a busy server; a
    batch of deliveries mostly reads messages from one or two segments.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._fds: dict[str, int] = {}

    def open(self, message: SpooledMessage) -> BodyReader:
        """A reader of ``message``'s body; raises :class:`SpoolError` as ``open_body`` does."""
        fd = self._fds.get(message.segment)
        if fd is None:
            fd = self._spool._open_segment(message)
            self._fds[message.segment] = fd
        return BodyReader(fd, message.body_offset, message.size, owns_fd=False)

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> BodyReaders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_OPEN: Final = "open"
_COMMITTING: Final = "being committed"
_COMMITTED: Final = "committed"
_DISCARDED: Final = "discarded"


class MessageWriter:
    """The body of one message while it is being received; made by :meth:`Spool.new_message`.

    The queue id is assigned at creation because the Received line written first into the
    body names it. Bytes accumulate in memory; past the spill threshold they move to a temp
    file and further bytes are appended there, so a large message never sits in memory.
    The body's CRC is computed as it arrives, so commit never reads a body back.
    """

    def __init__(
        self, spool: Spool, queue_id: str, tmp_dir: Path, spill_threshold: int, ops: FileOps
    ) -> None:
        self._spool = spool
        self._queue_id = queue_id
        self._tmp_dir = tmp_dir  # the temp file's name is made only if the body spills
        self._threshold = spill_threshold
        self._ops = ops
        self._state: str = _OPEN
        self._buf = bytearray()  # the whole body, or once spilled, the tail not yet in _fd
        self._fd: int | None = None
        self._in_file = 0  # bytes already in the temp file
        self._size = 0
        self._crc = 0
        self._spilled = False

    @property
    def queue_id(self) -> str:
        return self._queue_id

    @property
    def size(self) -> int:
        """Body bytes written so far."""
        return self._size

    @property
    def spilled(self) -> bool:
        """Whether the body outgrew memory and went to a temp file."""
        return self._spilled

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the body. Raises ``ValueError`` after commit or discard."""
        if self._state != _OPEN:
            raise ValueError(f"message {self._queue_id} is {self._state}; it cannot be written")
        n = memoryview(data).nbytes
        if not n:
            return
        self._crc = zlib.crc32(data, self._crc)
        self._size += n
        self._buf += data
        try:
            if self._fd is None:
                if len(self._buf) > self._threshold:
                    self._fd = self._ops.open(
                        self._tmp_path(), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600
                    )
                    self._spilled = True
                    self._flush_to_file()
            elif len(self._buf) >= _SPILL_CHUNK:
                self._flush_to_file()
        except OSError as exc:
            self._state = _DISCARDED
            self._release()
            raise SpoolError(f"cannot store the body of message {self._queue_id}: {exc}") from exc

    def discard(self) -> None:
        """Drop the body (memory and temp file). Idempotent; a no-op once commit has begun,
        because from then on the committer owns the body and releases it itself."""
        if self._state == _OPEN:
            self._state = _DISCARDED
            self._release()

    def _flush_to_file(self) -> None:
        assert self._fd is not None
        _write_all(self._ops, self._fd, self._buf)
        self._in_file += len(self._buf)
        self._buf = bytearray()

    def _release(self) -> None:
        self._buf = bytearray()
        self._drop_spill_file()

    def _drop_spill_file(self) -> None:
        """Close and remove the temp file; errors only cost a file that the next open removes."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            self._ops.close(fd)
        with contextlib.suppress(OSError):
            self._ops.unlink(self._tmp_path())

    def _tmp_path(self) -> Path:
        return self._tmp_dir / f"{self._spool.worker}-{self._queue_id}.tmp"

    def _begin_commit(self, spool: Spool) -> None:
        if self._spool is not spool:
            raise ValueError(f"message {self._queue_id} belongs to another spool")
        if self._state != _OPEN:
            raise ValueError(f"message {self._queue_id} is {self._state}; it cannot be committed")
        self._state = _COMMITTING

    def _finish(self, state: str) -> None:
        # The commit thread has already closed and removed the temp file.
        self._state = state
        self._buf = bytearray()


@dataclass(eq=False, slots=True)
class _Pending:
    writer: MessageWriter
    envelope: Envelope
    envelope_json: bytes
    future: asyncio.Future[SpooledMessage]


@dataclass(eq=False)
class _Segment:
    """One segment file and what the spool knows about it.

    Thread ownership: ``fd``, ``size`` and ``entry_synced`` belong to whoever writes the
    current batch while the segment is active (the commit thread, or the event loop for a
    small batch: one batch at a time, so never both); ``done_fd`` to the housekeeping
    thread; ``live``, ``retiring`` and the four fields about preparing to the event loop.
    """

    seq: int
    name: str
    nonce: bytes
    size: int = 0
    fd: int | None = None  # open for appending only while the segment is active
    entry_synced: bool = False  # the directory entry is durable
    live: set[str] = field(default_factory=set)  # queue ids stored here and not yet done
    done_fd: int | None = None
    retiring: bool = False
    prepared: int = 0  # the file holds synced zeros from the end of the records up to here
    preparing: asyncio.Task[None] | None = None  # zeros being written from preparing_from on
    preparing_from: int = 0
    prepare_failed: bool = False  # stop preparing this segment: its records are appended
    key: int = field(init=False)  # CRC-32 of the nonce: the start value of every head_crc

    def __post_init__(self) -> None:
        self.key = zlib.crc32(self.nonce)

    @property
    def done_name(self) -> str:
        return self.name.removesuffix(".seg") + ".done"


@dataclass(slots=True)
class _BatchOutcome:
    segment: _Segment | None  # None: no segment was made, or the one made was removed again
    placements: list[tuple[int, int]]  # (record offset, body offset) per record
    rotated: bool
    error: Exception | None


class _Appender:
    """Writes buffers at consecutive offsets of a file with as few system calls as it can."""

    def __init__(self, ops: FileOps, fd: int, pos: int) -> None:
        self._ops = ops
        self._fd = fd
        self.pos = pos  # the offset after everything added so far
        self._flushed = pos  # where the buffers not yet written start
        self._bufs: list[ReadableBuffer] = []

    def add(self, buf: bytes | bytearray) -> None:
        if buf:
            self._bufs.append(buf)
            self.pos += len(buf)

    def copy_from(self, src: int, count: int) -> None:
        self.flush()
        _copy_all(self._ops, src, self._fd, count, self.pos)
        self.pos += count
        self._flushed = self.pos

    def flush(self) -> None:
        if self._bufs:
            _pwrite_all(self._ops, self._fd, self._bufs, self._flushed)
            self._bufs = []
        self._flushed = self.pos


def _write_all(ops: FileOps, fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        n = ops.write(fd, view)
        view = view[n:]


def _pwrite_all(ops: FileOps, fd: int, buffers: list[ReadableBuffer], offset: int) -> None:
    views = [memoryview(b) for b in buffers]
    i = 0
    while i < len(views):
        n = ops.pwritev(fd, views[i : i + _IOV_BATCH], offset)
        if n <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += n
        while n:  # step over what was written, including part of a buffer
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _copy_all(ops: FileOps, src: int, dst: int, count: int, dst_offset: int) -> None:
    """Copy ``count`` bytes from the start of ``src`` to ``dst`` at ``dst_offset``."""
    done = 0
    while done < count:
        try:
            n = ops.copy_file_range(src, dst, count - done, done, dst_offset + done)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            break
        if n <= 0:
            raise OSError(errno.EIO, "spill file is shorter than its body")
        done += n
    while done < count:  # no kernel copy here: read and write in chunks
        chunk = ops.pread(src, min(_IO_CHUNK, count - done), done)
        if not chunk:
            raise OSError(errno.EIO, "spill file is shorter than its body")
        _pwrite_all(ops, dst, [chunk], dst_offset + done)
        done += len(chunk)


def _nothing() -> None:
    pass


def _segment_header(nonce: bytes) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, nonce, zlib.crc32(SEGMENT_MAGIC + nonce))


def _batch_size(batch: list[_Pending]) -> int:
    """The bytes the records of ``batch`` take in a segment."""
    return sum(
        _RECORD_HEADER_SIZE
        + len(p.writer.queue_id)
        + len(p.envelope_json)
        + p.writer.size
        + _RECORD_TRAILER.size
        for p in batch
    )


def spool_workers(root: Path | str) -> set[str]:
    """The names of every worker that has segments under ``root`` (open or not)."""
    try:
        names = os.listdir(Path(root) / "segments")
    except FileNotFoundError:
        return set()
    return {m.group("worker") for n in names if (m := _SPOOL_FILE.fullmatch(n))}


class Spool:
    """The message spool of one worker. See the module docstring for the format and rules.

    Use::

        spool = Spool(root, worker="w0")
        await spool.open()
        for msg in await spool.recover():   # mail accepted before the last stop
            scheduler.add(msg)
        writer = spool.new_message()
        writer.write(received_line); writer.write(chunk) ...
        msg = await spool.commit(writer, envelope)   # now, and only now, reply 250
        ...
        await spool.mark_done(msg)                   # after delivery or bounce
        await spool.close()

    ``sync=False`` skips every fsync: for tests and benchmarks only, it voids the promise.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        worker: str = "w0",
        segment_limit: int = DEFAULT_SEGMENT_LIMIT,
        sync: bool = True,
        spill_threshold: int = DEFAULT_SPILL_THRESHOLD,
        fileops: FileOps | None = None,
    ) -> None:
        if not _WORKER.fullmatch(worker):
            raise ValueError(f"worker name must be 1-32 of [A-Za-z0-9_]: {worker!r}")
        if segment_limit <= 0 or spill_threshold < 0:
            raise ValueError("segment_limit must be positive and spill_threshold not negative")
        self._root = Path(root)
        self._segment_dir = self._root / "segments"
        self._tmp_dir = self._root / "tmp"
        self._worker = worker
        self._segment_limit = segment_limit
        self._sync = sync
        self._spill_threshold = spill_threshold
        self._ops = fileops if fileops is not None else FileOps()
        self._state = "new"  # new -> open -> closing -> closed
        self._segments: dict[str, _Segment] = {}  # segments that still hold live messages
        self._active: _Segment | None = None
        self._next_seq = 1  # used by the commit thread only
        self._first_new_seq = 1  # segments numbered below this are recover()'s
        self._recovered = False
        self._pending: list[_Pending] = []
        self._committer: asyncio.Task[None] | None = None
        self._housekeeping: set[asyncio.Future[None]] = set()
        self._commit_pool: ThreadPoolExecutor | None = None
        self._house_pool: ThreadPoolExecutor | None = None
        self._kernel_syncs: KernelSyncs | None = None
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def worker(self) -> str:
        return self._worker

    # -- life cycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directories (fsyncing their parents), lock this worker's segments and
        remove temp files of an earlier run. Raises :class:`SpoolError` if another open
        spool holds the worker."""
        if self._state != "new":
            raise SpoolError(f"the spool cannot be opened again: it is {self._state}")
        self._commit_pool = ThreadPoolExecutor(1, f"pigeon-spool-{self._worker}-commit")
        self._house_pool = ThreadPoolExecutor(1, f"pigeon-spool-{self._worker}-done")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._commit_pool, self._open_sync)
        except BaseException:
            self._state = "closed"
            self._shutdown_pools()
            raise
        if self._sync:
            try:
                self._kernel_syncs = self._ops.kernel_syncs(loop)
            except Exception:  # only a way to be faster: the commit thread syncs without it
                log.warning("spool: no kernel syncs; syncing on the commit thread", exc_info=True)
        self._state = "open"

    async def close(self) -> None:
        """Finish pending commits and done-list writes, then close every file."""
        if self._state in ("new", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            return
        self._state = "closing"
        try:
            while self._committer is not None:
                await asyncio.shield(self._committer)
            while self._housekeeping:
                await asyncio.shield(asyncio.gather(*self._housekeeping, return_exceptions=True))
            loop = asyncio.get_running_loop()
            # Each pool runs one job at a time in order: a no-op on the commit pool returns
            # once it is idle, and closing on the housekeeping pool cannot overtake a done-list
            # append still running for a cancelled mark_done.
            await loop.run_in_executor(self._commit_pool, _nothing)
            await loop.run_in_executor(self._house_pool, self._close_files)
        finally:
            self._state = "closed"
            self._shutdown_pools()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- receiving -----------------------------------------------------------------------

    def new_message(self) -> MessageWriter:
        """Start a message; its queue id is assigned now."""
        self._check_open()
        return MessageWriter(self, new_queue_id(), self._tmp_dir, self._spill_threshold, self._ops)

    async def commit(self, writer: MessageWriter, envelope: Envelope) -> SpooledMessage:
        """Store the message durably; return only after the fsync that covers it.

        Raises :class:`SpoolError` if the message could not be stored (reply 451): then it
        will not be delivered, now or after a restart. Either way the writer is finished.
        If the caller is cancelled before its record is taken into a batch, nothing is
        stored; if later, the record may still become durable and ``recover`` finds it
        after the next restart (a possible duplicate, never a loss). The same holds for the
        one ``SpoolError`` whose outcome is unknown: "the spool stopped during a commit",
        raised when the event loop is torn down while a batch is being written or synced.
        """
        self._check_open()
        writer._begin_commit(self)
        try:
            envelope_json = envelope.to_json()
            if len(envelope_json) > MAX_ENVELOPE_SIZE:
                raise SpoolError(f"envelope of {writer.queue_id} is larger than the spool allows")
        except BaseException:
            writer._finish(_DISCARDED)
            writer._drop_spill_file()
            raise
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SpooledMessage] = loop.create_future()
        self._pending.append(_Pending(writer, envelope, envelope_json, future))
        if self._committer is None:
            self._committer = loop.create_task(self._run_committer())
        return await future

    # -- reading and finishing -----------------------------------------------------------

    def open_body(self, message: SpooledMessage) -> BodyReader:
        """Open the body of ``message`` for reading (the caller closes it).

        Raises :class:`SpoolError` if the message's segment is gone (it was marked done).
        """
        return BodyReader(self._open_segment(message), message.body_offset, message.size)

    def body_readers(self) -> BodyReaders:
        """Readers for a batch of messages that share their segments' descriptors."""
        return BodyReaders(self)

    def _open_segment(self, message: SpooledMessage) -> int:
        path = self._segment_dir / message.segment
        try:
            return self._ops.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise SpoolError(f"message {message.queue_id} is no longer in the spool") from exc

    async def mark_done(self, message: SpooledMessage) -> None:
        """Record that ``message`` needs no more work (delivered, bounced or expired).

        Idempotent. The done list is not fsynced: after a crash a done message may be
        delivered again, and delivery downstream is idempotent. A segment that is no longer
        active and whose every record is done is deleted with its done list.
        """
        await self.mark_done_many((message,))

    async def mark_done_many(self, messages: Iterable[SpooledMessage]) -> None:
        """``mark_done`` for several messages in one trip to the housekeeping thread."""
        self._check_open()
        by_segment: dict[str, tuple[_Segment, list[str]]] = {}
        for message in messages:
            seg = self._segments.get(message.segment)
            if seg is None or message.queue_id not in seg.live:
                continue
            seg.live.discard(message.queue_id)
            by_segment.setdefault(seg.name, (seg, []))[1].append(message.queue_id)
        if not by_segment:
            return
        work = [(seg, ids, self._claim_for_retirement(seg)) for seg, ids in by_segment.values()]
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._house_pool, self._append_done_many, work)
        self._housekeeping.add(future)  # so that close() waits for it
        future.add_done_callback(self._housekeeping.discard)
        try:
            # Shielded: once live is updated, the append must happen even if we are cancelled.
            await asyncio.shield(future)
        except OSError as exc:
            ids = ", ".join(i for _, batch, _ in work for i in batch)
            raise SpoolError(f"could not record {ids} as done: {exc}") from exc

    def pending_count(self) -> int:
        """Messages committed or recovered and not yet marked done."""
        return sum(len(seg.live) for seg in self._segments.values())

    async def recover(self) -> list[SpooledMessage]:
        """Return the messages stored before this spool was opened and not yet done, in
        arrival order; repair torn tails and drop fully done segments on the way.

        Run it once after :meth:`open`. It reads only segments that existed at ``open``, so
        commits may start before it finishes. Damaged data is logged, never raised.
        """
        self._check_open()
        if self._recovered:
            raise SpoolError("recover() has already run on this spool")
        self._recovered = True
        loop = asyncio.get_running_loop()
        kept, messages = await loop.run_in_executor(self._commit_pool, self._recover_sync)
        for seg in kept:
            self._segments[seg.name] = seg
        return messages

    # -- group commit (event loop side) --------------------------------------------------

    async def _run_committer(self) -> None:
        """Drain the pending commits one batch at a time; one task at most is running."""
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                taken, self._pending = self._pending, []
                batch = []
                for pending in taken:
                    if pending.future.cancelled():
                        # The session went away before its record was written: store nothing.
                        pending.writer._finish(_DISCARDED)
                        pending.writer._drop_spill_file()
                    else:
                        batch.append(pending)
                if batch:
                    await self._commit_batch(loop, batch)
        finally:
            self._committer = None
            for pending in self._pending:  # only if this task itself was cancelled
                if not pending.future.done():
                    pending.future.set_exception(SpoolError("the spool stopped committing"))
            if self._pending:
                self._pending = []

    async def _commit_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]) -> None:
        try:
            active = self._active
            if (
                active is not None
                and active.preparing is not None
                and active.size + _batch_size(batch) > active.preparing_from
            ):
                # The batch would reach the stretch being zero-filled: let the zeros land
                # first, or they could land over its records.
                await asyncio.shield(active.preparing)
            if self._writes_here(batch):
                outcome = await self._write_batch_here(loop, batch)
            else:
                outcome = await loop.run_in_executor(
                    self._commit_pool, self._write_batch, self._active, batch
                )
        except BaseException:
            # This task was cancelled (loop shutdown) while the batch was being written or
            # synced; its outcome is unknown, so nobody may be told 250, and no later batch
            # may append to a segment whose end is in doubt. Its file is closed on the commit
            # thread, after a write of this batch that may still be running there.
            seg, self._active = self._active, None
            if seg is not None and self._commit_pool is not None:
                self._commit_pool.submit(self._close_segment, seg)
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(SpoolError("the spool stopped during a commit"))
            raise
        seg = outcome.segment
        if seg is not None:
            self._segments.setdefault(seg.name, seg)
        if outcome.error is None:
            assert seg is not None
            for pending, (offset, body_offset) in zip(batch, outcome.placements, strict=True):
                writer = pending.writer
                message = SpooledMessage(
                    queue_id=writer.queue_id,
                    envelope=pending.envelope,
                    size=writer.size,
                    segment=seg.name,
                    offset=offset,
                    body_offset=body_offset,
                )
                seg.live.add(message.queue_id)
                writer._finish(_COMMITTED)
                if not pending.future.done():
                    pending.future.set_result(message)
            self._active = None if outcome.rotated else seg
            if self._active is not None:
                self._prepare_ahead(self._active)
        else:
            self._active = None
            log.error(
                "spool: commit of %d message(s) failed; replying 451",
                len(batch),
                exc_info=outcome.error,
            )
            for pending in batch:
                pending.writer._finish(_DISCARDED)
                if not pending.future.done():
                    error = SpoolError(
                        f"message {pending.writer.queue_id} was not stored: {outcome.error}"
                    )
                    error.__cause__ = outcome.error
                    pending.future.set_exception(error)
        if seg is not None and seg is not self._active and self._claim_for_retirement(seg):
            self._housekeep(self._retire, seg)

    def _writes_here(self, batch: list[_Pending]) -> bool:
        """Whether the event loop writes ``batch`` itself and lets the kernel sync it: only
        into a segment whose directory entry is durable, and only bodies in memory and few."""
        seg = self._active
        if self._kernel_syncs is None or seg is None or not seg.entry_synced:
            return False
        total = 0
        for pending in batch:
            if pending.writer._fd is not None:
                return False
            total += pending.writer.size + len(pending.envelope_json)
        return total <= _LOOP_WRITE_LIMIT

    async def _write_batch_here(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Pending]
    ) -> _BatchOutcome:
        """The commit thread's :meth:`_write_batch`, done by the event loop: one ``pwritev``
        into the page cache here, and a sync that the kernel performs and reports back."""
        seg = self._active
        assert seg is not None
        assert seg.fd is not None
        start = seg.size
        try:
            out = _Appender(self._ops, seg.fd, start)
            placements = self._add_records(out, seg, batch)
            out.flush()
            # From here the file holds the batch: should this task be cancelled while the
            # sync runs, the next batch must not be written over it.
            seg.size = out.pos
            await self._sync_in_kernel(loop, seg.fd)
        except OSError as exc:
            kept = await loop.run_in_executor(
                self._commit_pool, self._abandon_batch, seg, start, False, batch
            )
            return _BatchOutcome(kept, [], False, exc)
        rotated = seg.size >= self._segment_limit
        if rotated:
            self._close_segment(seg)
        return _BatchOutcome(seg, placements, rotated, None)

    async def _sync_in_kernel(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        syncs = self._kernel_syncs
        assert syncs is not None
        try:
            done = syncs.fdatasync(fd)
        except OSError as exc:
            # The request did not start, so nothing failed yet: sync on the commit thread,
            # and stop asking a kernel that cannot do it.
            if exc.errno in _NO_KERNEL_SYNC:
                log.info("spool: the kernel cannot sync %s through AIO (%s)", self._root, exc)
                self._kernel_syncs = None
                syncs.close()
            await loop.run_in_executor(self._commit_pool, self._ops.fdatasync, fd)
            return
        await done

    def _prepare_ahead(self, seg: _Segment) -> None:
        """Start zero-filling the next stretch of the active segment if the prepared part
        ahead of its records is running short (see "Preparing segments")."""
        if not self._sync or seg.fd is None or seg.preparing is not None or seg.prepare_failed:
            return
        # As far ahead as the records already reach, within bounds: a segment that fills
        # slowly keeps a short prepared part, one that fills fast a long one.
        ahead = min(_PREPARE_MOST, max(_PREPARE_FIRST, seg.size))
        if seg.prepared - seg.size >= ahead // 2:
            return
        start = max(seg.prepared, seg.size)
        end = min(seg.size + ahead, self._segment_limit)
        if end <= start:
            return
        try:
            # A descriptor of its own: the segment's may be closed (the segment rotated)
            # while the zeros are still being written.
            fd = self._ops.dup(seg.fd)
        except OSError:
            log.warning("spool segment %s: cannot prepare it", seg.name, exc_info=True)
            seg.prepare_failed = True
            return
        seg.preparing_from = start
        seg.preparing = asyncio.get_running_loop().create_task(self._prepare(seg, fd, start, end))
        self._housekeeping.add(seg.preparing)  # so that close() waits for it
        seg.preparing.add_done_callback(self._housekeeping.discard)

    async def _prepare(self, seg: _Segment, fd: int, start: int, end: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._house_pool, self._fill_zeros, fd, start, end)
        except Exception:
            # Only speed is lost: records go on being appended, which syncs more slowly.
            log.warning(
                "spool segment %s: could not prepare %d bytes at offset %d; appending",
                seg.name,
                end - start,
                start,
                exc_info=True,
            )
            seg.prepare_failed = True
        else:
            seg.prepared = end
        finally:
            seg.preparing = None

    def _fill_zeros(self, fd: int, start: int, end: int) -> None:
        try:
            self._ops.fill_zeros(fd, start, end)
        finally:
            self._ops.close(fd)

    def _claim_for_retirement(self, seg: _Segment) -> bool:
        """Whether ``seg`` is finished with; if so, forget it so that it is deleted once."""
        if seg.live or seg.retiring or seg is self._active:
            return False
        seg.retiring = True
        self._segments.pop(seg.name, None)
        return True

    def _housekeep(self, fn: Callable[[_Segment], None], seg: _Segment) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._house_pool, fn, seg)
        self._housekeeping.add(future)
        future.add_done_callback(self._housekeeping.discard)

    def _check_open(self) -> None:
        if self._state != "open":
            raise SpoolError(f"the spool is {self._state}, not open")

    def _shutdown_pools(self) -> None:
        if self._kernel_syncs is not None:
            syncs, self._kernel_syncs = self._kernel_syncs, None
            syncs.close()
        for pool in (self._commit_pool, self._house_pool):
            if pool is not None:
                pool.shutdown(wait=False)

    # -- group commit (commit thread side) -----------------------------------------------

    def _write_batch(self, seg: _Segment | None, batch: list[_Pending]) -> _BatchOutcome:
        """Append every record of ``batch``, sync once, and say where they went."""
        ops = self._ops
        created = False
        start = 0
        try:
            if seg is None:
                seg = self._create_segment()
                created = True
            assert seg.fd is not None
            start = seg.size
            out = _Appender(ops, seg.fd, start)
            if created:
                out.add(_segment_header(seg.nonce))
            placements = self._add_records(out, seg, batch)
            out.flush()
            if self._sync:
                ops.fdatasync(seg.fd)
                if not seg.entry_synced:
                    assert self._dir_fd is not None
                    # A new file's name is durable only once its directory is synced.
                    ops.fsync(self._dir_fd)
            seg.entry_synced = True
            seg.size = out.pos
        except Exception as exc:
            kept = self._abandon_batch(seg, start, created, batch) if seg is not None else None
            return _BatchOutcome(kept, [], False, exc)
        finally:
            for pending in batch:
                pending.writer._drop_spill_file()
        rotated = seg.size >= self._segment_limit
        if rotated:
            self._close_segment(seg)
        return _BatchOutcome(seg, placements, rotated, None)

    @staticmethod
    def _add_records(out: _Appender, seg: _Segment, batch: list[_Pending]) -> list[tuple[int, int]]:
        """Add each record of ``batch`` to ``out``; return their (offset, body offset)."""
        placements = []
        for pending in batch:
            writer = pending.writer
            queue_id = writer.queue_id.encode("ascii")
            env = pending.envelope_json
            prefix = _RECORD_PREFIX.pack(RECORD_MAGIC, len(queue_id), len(env), writer.size)
            head_crc = zlib.crc32(env, zlib.crc32(queue_id, zlib.crc32(prefix, seg.key)))
            offset = out.pos
            out.add(prefix + _CRC.pack(head_crc) + queue_id)
            out.add(env)
            body_offset = out.pos
            if writer._fd is not None:
                out.copy_from(writer._fd, writer._in_file)
            out.add(writer._buf)
            out.add(_RECORD_TRAILER.pack(writer._crc, RECORD_END))
            placements.append((offset, body_offset))
        return placements

    def _create_segment(self) -> _Segment:
        seq = self._next_seq
        self._next_seq += 1  # even if the open fails: never try a name twice
        name = f"{self._worker}-{seq:08d}.seg"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        fd = self._ops.open(self._segment_dir / name, flags, 0o600)
        return _Segment(seq, name, secrets.token_bytes(8), fd=fd)

    def _abandon_batch(
        self, seg: _Segment, start: int, created: bool, batch: list[_Pending]
    ) -> _Segment | None:
        """Undo a failed batch so that none of its records can be recovered and delivered.

        Returns the segment if its file still exists (sealed), None if it was removed.
        """
        ops = self._ops
        try:
            if created:
                self._close_segment(seg)
                ops.unlink(self._segment_dir / seg.name)
                if self._sync and self._dir_fd is not None:
                    ops.fsync(self._dir_fd)
                return None
            assert seg.fd is not None
            ops.ftruncate(seg.fd, start)
            if self._sync:
                ops.fsync(seg.fd)  # fsync, not fdatasync: the new size must be durable
            seg.size = start
        except OSError:
            log.exception("spool segment %s: could not remove a failed batch", seg.name)
            self._void(seg, batch)
        finally:
            self._close_segment(seg)
        return seg

    def _void(self, seg: _Segment, batch: list[_Pending]) -> None:
        """Last resort after a failed batch could not be cut off: put its ids on the done
        list, durably, so that recovery skips them."""
        ops = self._ops
        lines = b"".join(p.writer.queue_id.encode("ascii") + b"\n" for p in batch)
        try:
            fd = ops.open(self._segment_dir / seg.done_name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                _write_all(ops, fd, lines)
                if self._sync:
                    ops.fsync(fd)
            finally:
                ops.close(fd)
            if self._sync and self._dir_fd is not None:
                ops.fsync(self._dir_fd)
        except OSError:
            log.critical(
                "spool segment %s: refused messages %s could not be voided and may be "
                "delivered after a restart",
                seg.name,
                lines.decode("ascii").split(),
                exc_info=True,
            )

    def _close_segment(self, seg: _Segment) -> None:
        if seg.fd is not None:
            fd, seg.fd = seg.fd, None
            try:
                self._ops.close(fd)
            except OSError:
                log.warning("spool segment %s: close failed", seg.name, exc_info=True)

    # -- housekeeping thread -------------------------------------------------------------

    def _append_done_many(self, work: list[tuple[_Segment, list[str], bool]]) -> None:
        for seg, queue_ids, retire in work:
            # Appended even when the segment is about to go: if the deletion fails or the
            # process dies first, recovery still knows these messages are done.
            if seg.done_fd is None:
                path = self._segment_dir / seg.done_name
                seg.done_fd = self._ops.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            lines = "".join(f"{queue_id}\n" for queue_id in queue_ids)
            _write_all(self._ops, seg.done_fd, lines.encode("ascii"))
            if retire:
                self._retire(seg)

    def _retire(self, seg: _Segment) -> None:
        """Delete a segment whose every record is done, then its done list.

        The segment goes first and its removal is synced before the done list goes: a crash
        in between leaves a done list without a segment (removed at open), never a segment
        without its done list, which would deliver everything in it again.
        """
        ops = self._ops
        if seg.done_fd is not None:
            fd, seg.done_fd = seg.done_fd, None
            with contextlib.suppress(OSError):
                ops.close(fd)
        try:
            with contextlib.suppress(FileNotFoundError):
                ops.unlink(self._segment_dir / seg.name)
            if self._sync and self._dir_fd is not None:
                ops.fsync(self._dir_fd)
            with contextlib.suppress(FileNotFoundError):
                ops.unlink(self._segment_dir / seg.done_name)
        except OSError:
            log.warning("spool segment %s: could not delete it", seg.name, exc_info=True)

    # -- open, close and recovery (commit thread) ----------------------------------------

    def _open_sync(self) -> None:
        try:
            self._ensure_dir(self._segment_dir)
            self._ensure_dir(self._tmp_dir)
            self._lock_fd = self._take_lock()
            self._dir_fd = self._ops.open(self._segment_dir, os.O_RDONLY | os.O_DIRECTORY)
            # Spill files of an earlier run belong to messages that were never acknowledged.
            prefix = f"{self._worker}-"
            with os.scandir(self._tmp_dir) as entries:
                for entry in entries:
                    if entry.name.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):
                            self._ops.unlink(entry.path)
            files = self._own_files()
            segments = {seq for seq, kind, _ in files if kind != "done"}
            for seq, kind, name in files:
                if kind == "done" and seq not in segments:  # left by a crash in _retire
                    with contextlib.suppress(FileNotFoundError):
                        self._ops.unlink(self._segment_dir / name)
            self._next_seq = self._first_new_seq = max((s for s, _, _ in files), default=0) + 1
        except BaseException:
            self._close_files()
            raise

    def _ensure_dir(self, path: Path) -> None:
        if path.is_dir():
            return
        self._ensure_dir(path.parent)
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        # A new directory survives a crash only once its parent's entry for it is synced.
        self._fsync_dir(path.parent)

    def _fsync_dir(self, path: Path) -> None:
        if not self._sync:
            return
        fd = self._ops.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._ops.fsync(fd)
        finally:
            self._ops.close(fd)

    def _take_lock(self) -> int:
        fd = os.open(self._root / f"{self._worker}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise SpoolError(
                f"spool {self._root}: worker {self._worker} is already open elsewhere"
            ) from exc
        return fd

    def _close_files(self) -> None:
        if self._active is not None:
            self._close_segment(self._active)
        for seg in self._segments.values():
            self._close_segment(seg)
            if seg.done_fd is not None:
                fd, seg.done_fd = seg.done_fd, None
                with contextlib.suppress(OSError):
                    self._ops.close(fd)
        for attr in ("_dir_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                setattr(self, attr, None)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _own_files(self) -> list[tuple[int, str, str]]:
        """(seq, kind, file name) of this worker's segment files, sorted."""
        found = []
        with os.scandir(self._segment_dir) as entries:
            for entry in entries:
                m = _SPOOL_FILE.fullmatch(entry.name)
                if m and m["worker"] == self._worker:
                    found.append((int(m["seq"]), m["kind"], entry.name))
        return sorted(found)

    def _recover_sync(self) -> tuple[list[_Segment], list[SpooledMessage]]:
        kept: list[_Segment] = []
        messages: list[SpooledMessage] = []
        for seq, kind, name in self._own_files():
            if kind != "seg" or seq >= self._first_new_seq:
                continue
            try:
                scanned = self._scan_segment(name)
                if scanned is None:
                    continue
                nonce, size, found = scanned
                seg = _Segment(seq, name, nonce, size=size, entry_synced=True)
                done = self._read_done(seg)
                live = [m for m in found if m.queue_id not in done]
                if live:
                    seg.live = {m.queue_id for m in live}
                    kept.append(seg)
                    messages.extend(live)
                else:
                    self._retire(seg)
            except OSError:
                # Never let one unreadable segment stop the spool: leave it for a person.
                log.exception("spool segment %s: could not be recovered; left in place", name)
        return kept, messages

    def _read_done(self, seg: _Segment) -> set[str]:
        try:
            data = (self._segment_dir / seg.done_name).read_bytes()
        except FileNotFoundError:
            return set()
        except OSError:
            # Without the done list, deliver again rather than risk losing anything.
            log.exception("spool segment %s: done list unreadable; redelivering", seg.name)
            return set()
        # A torn last line is shorter than any queue id, so it matches nothing.
        return {line.decode("ascii", "replace") for line in data.split(b"\n") if line}

    def _scan_segment(self, name: str) -> tuple[bytes, int, list[SpooledMessage]] | None:
        """Check every record of one segment; cut off a torn tail.

        Returns (nonce, size after repair, intact records), or None if the segment held
        nothing and was removed, or had a damaged header and was renamed aside.
        """
        ops = self._ops
        path = self._segment_dir / name
        fd = ops.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            head = ops.pread(fd, _SEGMENT_HEADER.size, 0)
            if len(head) == _SEGMENT_HEADER.size:
                magic, nonce, crc = _SEGMENT_HEADER.unpack(head)
                if magic == SEGMENT_MAGIC and crc == zlib.crc32(head[:16]):
                    messages, good_end = self._scan_records(fd, name, nonce, size)
                    if good_end < size:
                        if not self._only_zeros(fd, good_end, size):
                            log.warning(
                                "spool segment %s: cut off %d bytes at offset %d left by an "
                                "interrupted write",
                                name,
                                size - good_end,
                                good_end,
                            )
                        # Zeros alone are the prepared part that no record reached: the
                        # normal end of the segment that was active at the last stop.
                        ops.ftruncate(fd, good_end)
                        if self._sync:
                            ops.fsync(fd)
                    return nonce, good_end, messages
                if any(head):
                    log.error(
                        "spool segment %s: damaged header; renamed to .corrupt for inspection",
                        name,
                    )
                    ops.rename(path, path.with_suffix(".corrupt"))
                    self._fsync_dir(self._segment_dir)
                    return None
            # Shorter than its header, or a header of zeros: the process stopped while
            # creating the segment, before anything in it was acknowledged.
            log.warning("spool segment %s: empty or torn at creation; removed", name)
            ops.unlink(path)
            self._fsync_dir(self._segment_dir)
            return None
        finally:
            ops.close(fd)

    def _scan_records(
        self, fd: int, name: str, nonce: bytes, size: int
    ) -> tuple[list[SpooledMessage], int]:
        """Return the intact records and the offset just after the last of them."""
        key = zlib.crc32(nonce)
        pos = good_end = _SEGMENT_HEADER.size
        messages: list[SpooledMessage] = []
        while pos < size:
            record_offset = pos
            header = self._read_record_header(fd, pos, size, key)
            if header is None:
                following = self._find_record(fd, pos + 1, size, key)
                if following is None:
                    break  # nothing we wrote follows: a torn tail
                log.warning(
                    "spool segment %s: skipped %d damaged bytes at offset %d",
                    name,
                    following - pos,
                    pos,
                )
                pos = following
                continue
            queue_id, env_json, body_offset, body_len = header
            end = body_offset + body_len + _RECORD_TRAILER.size
            if end > size:
                break  # the header promises more than was written: a torn tail
            trailer = self._ops.pread(fd, _RECORD_TRAILER.size, body_offset + body_len)
            body_crc, marker = _RECORD_TRAILER.unpack(trailer)
            if marker != RECORD_END or self._crc_of(fd, body_offset, body_len) != body_crc:
                if end == size:
                    break  # the last record, torn
                log.warning(
                    "spool segment %s: record %s at offset %d is damaged; skipped",
                    name,
                    queue_id,
                    pos,
                )
                pos = end
                continue
            good_end = pos = end
            try:
                envelope = Envelope.from_json(env_json)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "spool segment %s: record %s at offset %d has an unreadable envelope "
                    "(%s); skipped",
                    name,
                    queue_id,
                    record_offset,
                    exc,
                )
                continue
            messages.append(
                SpooledMessage(queue_id, envelope, body_len, name, record_offset, body_offset)
            )
        return messages, good_end

    def _read_record_header(
        self, fd: int, pos: int, size: int, key: int
    ) -> tuple[str, bytes, int, int] | None:
        """(queue id, envelope JSON, body offset, body length) if a valid header is at pos."""
        if pos + _RECORD_HEADER_SIZE > size:
            return None
        raw = self._ops.pread(fd, _RECORD_HEADER_SIZE, pos)
        if len(raw) < _RECORD_HEADER_SIZE:
            return None
        magic, id_len, env_len, body_len = _RECORD_PREFIX.unpack_from(raw)
        (head_crc,) = _CRC.unpack_from(raw, _RECORD_PREFIX.size)
        if magic != RECORD_MAGIC or not 0 < id_len <= _MAX_ID_LEN or env_len > MAX_ENVELOPE_SIZE:
            return None
        body_offset = pos + _RECORD_HEADER_SIZE + id_len + env_len
        if body_offset > size:
            return None
        meta = self._ops.pread(fd, id_len + env_len, pos + _RECORD_HEADER_SIZE)
        if len(meta) != id_len + env_len:
            return None
        if zlib.crc32(meta, zlib.crc32(raw[: _RECORD_PREFIX.size], key)) != head_crc:
            return None
        try:
            queue_id = meta[:id_len].decode("ascii")
        except UnicodeDecodeError:
            return None
        return queue_id, meta[id_len:], body_offset, body_len

    def _find_record(self, fd: int, start: int, size: int, key: int) -> int | None:
        """The offset of the next valid record header at or after ``start``, if any."""
        pos = start
        while pos < size:
            chunk = self._ops.pread(fd, _IO_CHUNK, pos)
            i = chunk.find(RECORD_MAGIC)
            while i != -1:
                if self._read_record_header(fd, pos + i, size, key) is not None:
                    return pos + i
                i = chunk.find(RECORD_MAGIC, i + 1)
            if pos + len(chunk) >= size or not chunk:
                return None
            pos += len(chunk) - (len(RECORD_MAGIC) - 1)  # a magic may straddle two chunks
        return None

    def _only_zeros(self, fd: int, start: int, end: int) -> bool:
        while start < end:
            chunk = self._ops.pread(fd, min(_IO_CHUNK, end - start), start)
            if not chunk:
                return True  # the file ends early: nothing more to look at
            if chunk.count(0) != len(chunk):
                return False
            start += len(chunk)
        return True

    def _crc_of(self, fd: int, offset: int, length: int) -> int | None:
        """CRC-32 of a range of the file, or None if the file ends before the range does."""
        crc = 0
        end = offset + length
        while offset < end:
            chunk = self._ops.pread(fd, min(_IO_CHUNK, end - offset), offset)
            if not chunk:
                return None
            crc = zlib.crc32(chunk, crc)
            offset += len(chunk)
        return crc
