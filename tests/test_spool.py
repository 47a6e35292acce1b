"""The spool: 250 only after fsync, group commit, refused batches, and recovery.

Everything runs on real files under ``tmp_path``. Faults and stalls are injected through the
:class:`FileOps` seam, which is also how the tests count syncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import sys
import threading
from collections import Counter
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from pigeon.queue.envelope import Envelope
from pigeon.queue.fileops import FileOps, KernelSyncs
from pigeon.queue.spool import RECORD_MAGIC, Spool, SpooledMessage, SpoolError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

T = TypeVar("T")

ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=("bob@example.net", "carol@exämple.net"),
    client_address="192.0.2.1",
    client_name="client.example.org",
    helo="client.example.org",
    received_at=1_700_000_000.25,
    mail_parameters=(("BODY", "8BITMIME"), ("SMTPUTF8", None)),
)
SEGMENT_HEADER_SIZE = 20
RECORD_TRAILER_SIZE = 8  # body CRC and end marker


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def envelope(n: int) -> Envelope:
    return Envelope(sender=f"s{n}@example.org", recipients=(f"r{n}@example.net",))


class FaultyOps(FileOps):
    """Counts calls, and raises the error stored under an operation's name on its next call.

    A sync handed to the kernel counts as an ``fdatasync`` too (and under ``kernel``), and
    fails the same way, so each test covers whichever path its batches take.
    """

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.on_loop: Counter[str] = Counter()  # the calls made on the event loop's thread
        self.fail: dict[str, OSError] = {}
        self._lock = threading.Lock()

    def _enter(self, name: str) -> None:
        with self._lock:
            self.calls[name] += 1
            if threading.current_thread() is threading.main_thread():
                self.on_loop[name] += 1
            error = self.fail.pop(name, None)
        if error is not None:
            raise error

    def fdatasync(self, fd: int) -> None:
        self._enter("fdatasync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self._enter("fsync")
        super().fsync(fd)

    def pwritev(self, fd: int, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        self._enter("pwritev")
        return super().pwritev(fd, buffers, offset)

    def copy_file_range(
        self, src: int, dst: int, count: int, offset_src: int, offset_dst: int
    ) -> int:
        self._enter("copy_file_range")
        return super().copy_file_range(src, dst, count, offset_src, offset_dst)

    def ftruncate(self, fd: int, length: int) -> None:
        self._enter("ftruncate")
        super().ftruncate(fd, length)

    def kernel_syncs(self, loop: asyncio.AbstractEventLoop) -> KernelSyncs | None:
        real = super().kernel_syncs(loop)
        return None if real is None else CountedKernelSyncs(self, real, loop)


class CountedKernelSyncs:
    """The real kernel syncs, counted by a :class:`FaultyOps`, and failed on its say."""

    def __init__(self, ops: FaultyOps, real: KernelSyncs, loop: asyncio.AbstractEventLoop):
        self._ops = ops
        self._real = real
        self._loop = loop

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        try:
            self._ops._enter("fdatasync")
        except OSError as exc:  # as the device would report it: when the sync completes
            failed: asyncio.Future[None] = self._loop.create_future()
            failed.set_exception(exc)
            self._ops.calls["kernel"] += 1
            return failed
        started = self._real.fdatasync(fd)
        self._ops.calls["kernel"] += 1  # counted once the kernel took the request
        return started

    def close(self) -> None:
        self._real.close()


class StallingOps(FaultyOps):
    """fdatasync waits until the test releases it, and tells the test it has begun.

    A sync handed to the kernel runs this same fdatasync on a thread of its own, so it
    stalls the same way without blocking the event loop.
    """

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        self._enter("fdatasync")
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise OSError(errno.ETIMEDOUT, "the test never released fdatasync")
        FileOps.fdatasync(self, fd)

    def kernel_syncs(self, loop: asyncio.AbstractEventLoop) -> KernelSyncs | None:
        return ThreadedKernelSyncs(self, loop)


class ThreadedKernelSyncs:
    """Kernel syncs played by ``ops.fdatasync`` on a thread: they fail and stall with it."""

    def __init__(self, ops: FaultyOps, loop: asyncio.AbstractEventLoop) -> None:
        self._ops = ops
        self._loop = loop

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        self._ops.calls["kernel"] += 1
        return self._loop.run_in_executor(None, self._ops.fdatasync, fd)

    def close(self) -> None:
        pass


async def store(
    spool: Spool, body: bytes, env: Envelope = ENVELOPE, chunk: int = 64 << 10
) -> SpooledMessage:
    writer = spool.new_message()
    for i in range(0, len(body), chunk):
        writer.write(body[i : i + chunk])
    return await spool.commit(writer, env)


def read_body(spool: Spool, message: SpooledMessage) -> bytes:
    with spool.open_body(message) as f:
        return f.readall()


async def recovered(root: Path, **kwargs: Any) -> list[tuple[str, Envelope, bytes]]:
    async with Spool(root, **kwargs) as spool:
        return [(m.queue_id, m.envelope, read_body(spool, m)) for m in await spool.recover()]


def segment_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "segments").iterdir())


# -- the round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1024, 3 << 20], ids=["empty", "1KiB", "3MiB-spilled"])
def test_commit_then_recover_returns_envelope_and_body_byte_for_byte(
    tmp_path: Path, size: int
) -> None:
    body = (os.urandom(size // 2) + b"line\r\n.\r\n\x00\xff" * (size // 20))[:size]
    body += os.urandom(size - len(body))

    async def scenario() -> SpooledMessage:
        async with Spool(tmp_path) as spool:
            assert await spool.recover() == []
            writer = spool.new_message()
            for i in range(0, size, 65536):
                writer.write(body[i : i + 65536])
            assert writer.size == size
            assert writer.spilled == (size > 1 << 20)
            message = await spool.commit(writer, ENVELOPE)
            assert message.queue_id == writer.queue_id
            assert message.size == size
            assert read_body(spool, message) == body
            assert list((tmp_path / "tmp").iterdir()) == []  # the spill file is gone
            return message

    message = run(scenario())
    assert run(recovered(tmp_path)) == [(message.queue_id, ENVELOPE, body)]


def test_many_messages_come_back_in_arrival_order(tmp_path: Path) -> None:
    bodies = [b"message %d\r\n" % i * (i + 1) for i in range(30)]

    async def scenario() -> list[str]:
        async with Spool(tmp_path, segment_limit=2000) as spool:
            return [(await store(spool, b, envelope(i))).queue_id for i, b in enumerate(bodies)]

    queue_ids = run(scenario())
    assert len(segment_files(tmp_path)) > 3  # the small limit made it rotate
    got = run(recovered(tmp_path))
    assert got == [
        (q, envelope(i), b) for i, (q, b) in enumerate(zip(queue_ids, bodies, strict=True))
    ]


def test_body_reader_reads_exactly_the_body(tmp_path: Path) -> None:
    body = bytes(range(256)) * 40

    async def scenario() -> None:
        async with Spool(tmp_path) as spool:
            first = await store(spool, body)
            await store(spool, b"the next record must not leak into the first body")
            with spool.open_body(first) as f:
                assert f.read(10) == body[:10]
                buf = bytearray(100)
                assert f.readinto(buf) == 100
                assert bytes(buf) == body[10:110]
                assert f.tell() == 110
                f.seek(-5, io.SEEK_END)
                assert f.read() == body[-5:]
                assert f.read() == b""
                f.seek(0)
                assert f.readall() == body
            with spool.open_body(first) as raw, io.BufferedReader(raw) as buffered:
                assert buffered.read() == body
            assert f.closed
            with pytest.raises(ValueError, match="closed"):
                f.read(1)

    run(scenario())


# -- group commit and the ordering rule --------------------------------------------------


def test_concurrent_commits_share_fdatasyncs(tmp_path: Path) -> None:
    ops = FaultyOps()

    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            return await asyncio.gather(
                *(store(spool, b"body %d\r\n" % i, envelope(i)) for i in range(50))
            )

    messages = run(scenario())
    assert len({m.queue_id for m in messages}) == 50
    assert ops.calls["fdatasync"] <= 5, ops.calls
    got = run(recovered(tmp_path))
    assert [(q, b) for q, _, b in got] == [
        (m.queue_id, b"body %d\r\n" % i) for i, m in enumerate(messages)
    ]


@pytest.mark.parametrize("synced_by", ["commit-thread", "kernel"])
def test_commit_is_not_done_while_its_fsync_is_blocked(tmp_path: Path, synced_by: str) -> None:
    """Group commit never answers 250 before the fsync that covers the message.

    A batch that opens a segment syncs on the commit thread; later small batches are
    written by the event loop and synced by the kernel. Both must wait for their sync.
    """
    ops = StallingOps()

    async def scenario() -> None:
        async with Spool(tmp_path, fileops=ops) as spool:
            if synced_by == "kernel":
                ops.release.set()
                await store(spool, b"opens the segment")
                ops.release.clear()
                ops.entered.clear()
            syncs_before = ops.calls["fdatasync"]
            writer = spool.new_message()
            writer.write(b"hello\r\n")
            first = asyncio.create_task(spool.commit(writer, ENVELOPE))
            assert await asyncio.to_thread(ops.entered.wait, 5)
            # Commits arriving while the sync is in flight gather for the next batch.
            later = [asyncio.create_task(store(spool, b"later %d" % i)) for i in range(20)]
            await asyncio.sleep(0.05)
            assert not first.done()
            assert not any(t.done() for t in later)
            ops.release.set()
            message = await asyncio.wait_for(first, 5)
            assert read_body(spool, message) == b"hello\r\n"
            await asyncio.wait_for(asyncio.gather(*later), 5)
            # The twenty later ones shared one sync, and the kernel did both or neither.
            assert ops.calls["fdatasync"] - syncs_before == 2
            assert ops.calls["kernel"] == (2 if synced_by == "kernel" else 1)

    run(scenario())


def test_a_new_segment_syncs_its_directory_once(tmp_path: Path) -> None:
    ops = FaultyOps()

    async def scenario() -> None:
        async with Spool(tmp_path, fileops=ops) as spool:
            before = Counter(ops.calls)
            await store(spool, b"one")
            assert ops.calls["fdatasync"] - before["fdatasync"] == 1
            assert ops.calls["fsync"] - before["fsync"] == 1  # the segments/ directory
            await store(spool, b"two")
            assert ops.calls["fdatasync"] - before["fdatasync"] == 2
            assert ops.calls["fsync"] - before["fsync"] == 1  # same file: no new entry
            # The first batch made the file, so the commit thread synced it; the second
            # was written by the event loop and synced by the kernel (Linux AIO).
            assert ops.calls["kernel"] == (1 if sys.platform.startswith("linux") else 0)
            assert ops.on_loop["pwritev"] == ops.calls["kernel"]

    run(scenario())


class RefusingKernelSyncs:
    """Kernel syncs whose requests never start: io_submit fails with ``error``."""

    def __init__(self, error: int) -> None:
        self.error = error
        self.asked = 0
        self.closed = False

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        self.asked += 1
        raise OSError(self.error, os.strerror(self.error))

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("error", "asked_again"),
    [(errno.EINVAL, False), (errno.EAGAIN, True)],
    ids=["cannot-sync-here", "busy"],
)
def test_a_kernel_sync_that_cannot_start_syncs_on_the_commit_thread(
    tmp_path: Path, error: int, asked_again: bool
) -> None:
    syncs = RefusingKernelSyncs(error)

    class Ops(FaultyOps):
        def kernel_syncs(self, loop: asyncio.AbstractEventLoop) -> KernelSyncs | None:
            return syncs

    ops = Ops()

    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            return [await store(spool, b"body %d" % i) for i in range(3)]

    messages = run(scenario())
    assert ops.calls["fdatasync"] == 3  # every message synced by the thread all the same
    # EINVAL: this kernel cannot, so it is not asked again; EAGAIN: only this time.
    assert syncs.asked == (2 if asked_again else 1)
    assert syncs.closed
    got = run(recovered(tmp_path))
    assert [(q, b) for q, _, b in got] == [
        (m.queue_id, b"body %d" % i) for i, m in enumerate(messages)
    ]


async def cancel_a_commit_in_its_kernel_sync(spool: Spool, ops: StallingOps) -> SpooledMessage:
    """Store "first"; then cancel the committer while the kernel syncs "stalled" (whose
    session must get no 250); release the sync and return the first message."""
    ops.release.set()
    first = await store(spool, b"first")
    ops.release.clear()
    ops.entered.clear()
    stalled = asyncio.create_task(store(spool, b"stalled"))
    assert await asyncio.to_thread(ops.entered.wait, 5)
    assert ops.calls["kernel"] == 1
    committer = spool._committer
    assert committer is not None
    committer.cancel()
    with pytest.raises(SpoolError, match="stopped during a commit"):
        await stalled
    ops.release.set()
    return first


def test_a_commit_cancelled_during_its_kernel_sync_leaves_the_segment_to_nobody(
    tmp_path: Path,
) -> None:
    """If the committer stops while the kernel syncs a batch (the loop is shutting down),
    the waiting sessions get no 250, and no later batch is written after a batch whose
    outcome nobody knows: it starts a new segment."""
    ops = StallingOps()

    async def scenario() -> tuple[SpooledMessage, SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            first = await cancel_a_commit_in_its_kernel_sync(spool, ops)
            after = await store(spool, b"after")
            assert after.segment != first.segment
            return first, after

    first, after = run(scenario())
    got = [(q, b) for q, _, b in run(recovered(tmp_path))]
    # The stalled record did reach the disk: a possible duplicate, never a loss.
    assert got[0] == (first.queue_id, b"first")
    assert got[-1] == (after.queue_id, b"after")
    assert [b for _, b in got] == [b"first", b"stalled", b"after"]


def open_segment_files(root: Path) -> list[str]:
    """Segment files (deleted ones too) this process still holds a descriptor of."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(root / "segments")):
                names.append(target)
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_segment_left_by_a_cancelled_commit_is_closed_even_once_deleted(
    tmp_path: Path,
) -> None:
    ops = StallingOps()

    async def scenario() -> None:
        async with Spool(tmp_path, fileops=ops) as spool:
            first = await cancel_a_commit_in_its_kernel_sync(spool, ops)
            # Its last live message done, the segment is deleted: its file must be closed.
            await spool.mark_done(first)
        assert open_segment_files(tmp_path) == []

    run(scenario())
    assert run(recovered(tmp_path)) == []


# -- refused batches ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "error", "spilled"),
    [
        ("fdatasync", errno.EIO, True),
        ("pwritev", errno.ENOSPC, True),
        ("copy_file_range", errno.EIO, True),
        # Bodies in memory: appended, the event loop writes them and the kernel syncs them.
        ("fdatasync", errno.EIO, False),
        ("pwritev", errno.ENOSPC, False),
    ],
    ids=["sync-spilled", "write-spilled", "copy-spilled", "sync-in-memory", "write-in-memory"],
)
@pytest.mark.parametrize("first_in_segment", [False, True], ids=["appended", "new-segment"])
def test_failed_write_or_sync_refuses_the_whole_batch_for_good(
    tmp_path: Path, operation: str, error: int, spilled: bool, first_in_segment: bool
) -> None:
    ops = FaultyOps()
    refused = [b"REFUSED-%d-" % i + b"x" * 3000 for i in range(3)]
    spill_threshold = 1000 if spilled else 1 << 20

    async def scenario() -> tuple[list[SpooledMessage], SpooledMessage]:
        async with Spool(tmp_path, fileops=ops, spill_threshold=spill_threshold) as spool:
            kept = [] if first_in_segment else [await store(spool, b"before")]
            kernel_before = ops.calls["kernel"]
            ops.fail[operation] = OSError(error, os.strerror(error))
            results = await asyncio.gather(
                *(store(spool, body) for body in refused), return_exceptions=True
            )
            assert all(isinstance(r, SpoolError) for r in results), results
            on_loop = not spilled and not first_in_segment
            assert ops.on_loop["pwritev"] == int(on_loop)  # the loop wrote the batch itself
            assert ops.calls["kernel"] - kernel_before == int(on_loop and operation == "fdatasync")
            after = await store(spool, b"after")
            if kept:
                assert after.segment != kept[0].segment  # a fresh segment after a failure
            assert read_body(spool, after) == b"after"
            assert list((tmp_path / "tmp").iterdir()) == []
            return kept, after

    kept, after = run(scenario())
    got = run(recovered(tmp_path))
    assert [(q, b) for q, _, b in got] == [(m.queue_id, b"before") for m in kept] + [
        (after.queue_id, b"after")
    ]
    for name in segment_files(tmp_path):
        assert b"REFUSED" not in (tmp_path / "segments" / name).read_bytes()


def test_refused_records_that_cannot_be_cut_off_are_voided(tmp_path: Path) -> None:
    ops = FaultyOps()

    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            before = await store(spool, b"before")
            ops.fail["fdatasync"] = OSError(errno.EIO, "I/O error")
            ops.fail["ftruncate"] = OSError(errno.EIO, "I/O error")
            with pytest.raises(SpoolError, match="not stored"):
                await store(spool, b"REFUSED")
            after = await store(spool, b"after")
            return [before, after]

    messages = run(scenario())
    # The refused record is still in the file, intact, but on the done list.
    segments = [(tmp_path / "segments" / n).read_bytes() for n in segment_files(tmp_path)]
    assert any(b"REFUSED" in data for data in segments)
    got = run(recovered(tmp_path))
    assert [(q, b) for q, _, b in got] == [
        (messages[0].queue_id, b"before"),
        (messages[1].queue_id, b"after"),
    ]


def test_a_commit_cancelled_before_its_batch_stores_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path, spill_threshold=10) as spool:
            writer = spool.new_message()
            writer.write(b"spilled body " * 10)
            task = asyncio.create_task(spool.commit(writer, ENVELOPE))
            await asyncio.sleep(0)  # the commit is queued; the committer has not run yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await store(spool, b"next")).size == 4
            assert spool.pending_count() == 1
            with pytest.raises(ValueError, match="discarded"):
                writer.write(b"more")

    run(scenario())
    assert [b for _, _, b in run(recovered(tmp_path))] == [b"next"]
    assert list((tmp_path / "tmp").iterdir()) == []


# -- recovery from damage ----------------------------------------------------------------


def three_records(root: Path) -> tuple[Path, bytes, list[SpooledMessage]]:
    """One segment with three small records; returns its path, its bytes and the records."""

    async def scenario() -> list[SpooledMessage]:
        async with Spool(root) as spool:
            return [await store(spool, b"body %d\r\n" % i, envelope(i)) for i in range(3)]

    messages = run(scenario())
    assert len({m.segment for m in messages}) == 1
    path = root / "segments" / messages[0].segment
    # Without the zeros prepared after the records: what a crash may leave is the subject.
    return path, path.read_bytes()[: record_end(messages[-1])], messages


def record_end(message: SpooledMessage) -> int:
    return message.body_offset + message.size + RECORD_TRAILER_SIZE


def extents(data: bytes, messages: list[SpooledMessage]) -> list[tuple[int, int]]:
    starts = [m.offset for m in messages]
    return list(zip(starts, [*starts[1:], len(data)], strict=True))


def interesting_offsets(data: bytes, spans: list[tuple[int, int]]) -> list[int]:
    """Every offset in and around headers and trailers, every fifth one elsewhere.

    Each offset costs a spool open and recovery (a few milliseconds); this keeps the
    exhaustive tests fast while still trying every byte where framing lives.
    """
    chosen = set(range(0, len(data), 5)) | set(range(SEGMENT_HEADER_SIZE + 2))
    for start, end in spans:
        chosen |= set(range(start - 2, start + 42)) | set(range(end - 10, end + 2))
    return sorted(o for o in chosen if 0 <= o < len(data))


async def recover_ids(root: Path, *, sync: bool = True) -> list[str]:
    async with Spool(root, sync=sync) as spool:
        return [m.queue_id for m in await spool.recover()]


def test_torn_tail_of_any_length_leaves_exactly_the_whole_records(tmp_path: Path) -> None:
    path, data, messages = three_records(tmp_path)
    spans = extents(data, messages)

    async def scenario() -> None:
        for cut in interesting_offsets(data, spans):
            path.write_bytes(data[:cut])
            expected = [
                m.queue_id for m, (_, end) in zip(messages, spans, strict=True) if end <= cut
            ]
            # sync=False only skips fsync, which would make this loop slow; repair is the same.
            assert await recover_ids(tmp_path, sync=False) == expected, cut
            if expected:
                # The torn part is cut off, so the next start finds a clean segment.
                assert path.stat().st_size == spans[len(expected) - 1][1]
            else:
                assert not path.exists()

    run(scenario())


def test_zeros_after_the_last_record_are_cut_off(tmp_path: Path) -> None:
    # What ext4 often leaves after a crash: the size grew, the data blocks never came.
    path, data, messages = three_records(tmp_path)
    path.write_bytes(data + bytes(8192))
    assert run(recover_ids(tmp_path)) == [m.queue_id for m in messages]
    assert path.read_bytes() == data


# -- preparing the active segment ----------------------------------------------------------


class PreparingOps(FaultyOps):
    """Counts the zero-fills that prepare segments; can stall them or make them fail."""

    def __init__(self) -> None:
        super().__init__()
        self.filled: list[tuple[int, int]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def fill_zeros(self, fd: int, start: int, end: int) -> None:
        self._enter("fill_zeros")
        self.filled.append((start, end))
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise OSError(errno.ETIMEDOUT, "the test never released fill_zeros")
        super().fill_zeros(fd, start, end)


def test_records_are_written_over_zeros_prepared_ahead_of_them(tmp_path: Path) -> None:
    """The active segment is zero-filled and synced ahead of its records, so that a
    commit's sync writes data only and the file does not grow with each batch."""
    ops = PreparingOps()
    bodies = [b"body %d\r\n" % i + bytes(1000) for i in range(20)]

    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            first = await store(spool, bodies[0], envelope(0))
            path = tmp_path / "segments" / first.segment
            messages = [first, await store(spool, bodies[1], envelope(1))]
            prepared_size = path.stat().st_size
            assert prepared_size > record_end(messages[-1]) + 100_000
            messages += [await store(spool, b, envelope(i + 2)) for i, b in enumerate(bodies[2:])]
            assert path.stat().st_size == prepared_size  # over the zeros, not appended
            data = path.read_bytes()
            assert data[record_end(messages[-1]) :].count(0) == prepared_size - record_end(
                messages[-1]
            )
            assert [read_body(spool, m) for m in messages] == bodies
            return messages

    messages = run(scenario())
    assert len(ops.filled) == 1  # 20 KiB of records: far from needing a second stretch
    path = tmp_path / "segments" / messages[0].segment
    assert [b for _, _, b in run(recovered(tmp_path))] == bodies
    # Recovery cut the zeros no record reached, as the end of the segment active at the stop.
    assert path.stat().st_size == record_end(messages[-1])


def test_recovery_cuts_the_prepared_zeros_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, data, messages = three_records(tmp_path)
    assert path.stat().st_size > len(data)  # the prepared zeros are still there
    with caplog.at_level(logging.WARNING, logger="pigeon.queue.spool"):
        assert run(recover_ids(tmp_path)) == [m.queue_id for m in messages]
    assert caplog.records == []
    assert path.read_bytes() == data
    # A torn record before the zeros is another matter: it is cut off, and said so.
    path.write_bytes(data[:-5] + bytes(4096))
    with caplog.at_level(logging.WARNING, logger="pigeon.queue.spool"):
        assert run(recover_ids(tmp_path)) == [m.queue_id for m in messages[:2]]
    assert "left by an interrupted write" in caplog.text


def test_records_wait_for_zeros_still_being_written_where_they_go(tmp_path: Path) -> None:
    """A batch that reaches the stretch being zero-filled waits until the zeros are
    written: otherwise zeros could land over its records after its sync."""
    ops = PreparingOps()
    ops.release.clear()

    async def scenario() -> None:
        async with Spool(tmp_path, fileops=ops) as spool:
            first = await store(spool, b"first\r\n")  # not held up: it opens the segment
            assert await asyncio.to_thread(ops.entered.wait, 5)
            start, _ = ops.filled[0]
            assert start == record_end(first)
            second = asyncio.create_task(store(spool, b"second\r\n"))
            await asyncio.sleep(0.1)
            assert not second.done()
            ops.release.set()
            message = await asyncio.wait_for(second, 5)
            assert message.offset == start  # where the zeros went first
            assert read_body(spool, first) == b"first\r\n"
            assert read_body(spool, message) == b"second\r\n"

    run(scenario())
    assert [b for _, _, b in run(recovered(tmp_path))] == [b"first\r\n", b"second\r\n"]


def test_a_segment_that_cannot_be_prepared_is_appended_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ops = PreparingOps()
    ops.fail["fill_zeros"] = OSError(errno.ENOSPC, "No space left on device")

    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path, fileops=ops) as spool:
            messages = [await store(spool, b"body %d" % i, envelope(i)) for i in range(5)]
            path = tmp_path / "segments" / messages[0].segment
            assert path.stat().st_size == record_end(messages[-1])
            return messages

    with caplog.at_level(logging.WARNING, logger="pigeon.queue.spool"):
        messages = run(scenario())
    assert ops.calls["fill_zeros"] == 1  # not tried again for that segment
    assert "could not prepare" in caplog.text
    assert "No space left on device" in caplog.text
    assert run(recover_ids(tmp_path)) == [m.queue_id for m in messages]


def test_without_sync_nothing_is_prepared(tmp_path: Path) -> None:
    ops = PreparingOps()

    async def scenario() -> None:
        async with Spool(tmp_path, fileops=ops, sync=False) as spool:
            for i in range(3):
                await store(spool, b"body %d" % i, envelope(i))

    run(scenario())
    assert ops.calls["fill_zeros"] == 0


def test_a_damaged_byte_loses_only_its_own_record(tmp_path: Path) -> None:
    path, data, messages = three_records(tmp_path)
    spans = extents(data, messages)
    corrupt = path.with_suffix(".corrupt")

    async def scenario() -> None:
        for offset in interesting_offsets(data, spans):
            damaged = bytearray(data)
            damaged[offset] ^= 0x55
            path.write_bytes(damaged)
            got = await recover_ids(tmp_path, sync=False)
            if offset < SEGMENT_HEADER_SIZE:
                # A damaged segment header: set aside for a person, never guessed at.
                assert got == [], offset
                assert corrupt.exists()
                assert not path.exists()
                corrupt.unlink()
            else:
                expected = [
                    m.queue_id
                    for m, (a, b) in zip(messages, spans, strict=True)
                    if not a <= offset < b
                ]
                assert got == expected, offset

    run(scenario())


def test_damaged_middle_record_is_logged_with_segment_and_offset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, data, messages = three_records(tmp_path)
    middle = messages[1]
    cases = {
        "body": middle.body_offset + 2,  # framing intact, body CRC wrong
        "header": middle.offset + 5,  # a length field: the header CRC catches it
    }
    for where, offset in cases.items():
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        path.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pigeon.queue.spool"):
            got = run(recover_ids(tmp_path))
        assert got == [messages[0].queue_id, messages[2].queue_id], where
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(middle.segment in w and f"offset {middle.offset}" in w for w in warnings), (
            where,
            warnings,
        )
        # The damage is in the middle: nothing after it was cut off.
        assert path.stat().st_size == len(data)


def test_a_record_hidden_in_a_body_is_never_taken_for_a_real_one(tmp_path: Path) -> None:
    # An attacker mails bytes that look exactly like a spool record with an envelope of
    # their choosing. Even when damage sends recovery looking for the next record magic,
    # the forged record does not validate without the segment's secret nonce.
    async def scenario() -> SpooledMessage:
        async with Spool(tmp_path / "other") as other:
            forged = await store(other, b"forged", Envelope("evil@x", ("victim@y",)))
        forged_record = (tmp_path / "other" / "segments" / forged.segment).read_bytes()[20:]
        async with Spool(tmp_path) as spool:
            return await store(spool, b"head " + forged_record + b" tail")

    carrier = run(scenario())
    path = tmp_path / "segments" / carrier.segment
    data = bytearray(path.read_bytes())
    assert RECORD_MAGIC in data[carrier.body_offset :]
    data[carrier.offset + 1] ^= 0xFF  # damage the carrier's header
    path.write_bytes(data)
    assert run(recover_ids(tmp_path)) == []


# -- done lists and deletion -------------------------------------------------------------


def test_done_messages_are_not_recovered(tmp_path: Path) -> None:
    async def scenario() -> list[SpooledMessage]:
        async with Spool(tmp_path) as spool:
            messages = [await store(spool, b"m%d" % i) for i in range(3)]
            assert spool.pending_count() == 3
            await spool.mark_done(messages[1])
            await spool.mark_done(messages[1])  # idempotent
            assert spool.pending_count() == 2
            # The active segment is kept even though it has finished records.
            assert segment_files(tmp_path) == ["w0-00000001.done", messages[0].segment]
            return messages

    messages = run(scenario())
    got = run(recovered(tmp_path))
    assert [q for q, _, _ in got] == [messages[0].queue_id, messages[2].queue_id]


def test_fully_done_rotated_segment_is_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        # A limit of one byte: every batch fills its segment, which then rotates.
        async with Spool(tmp_path, segment_limit=1) as spool:
            first = await store(spool, b"first")
            second = await store(spool, b"second")
            assert first.segment != second.segment
            assert segment_files(tmp_path) == [first.segment, second.segment]
            await spool.mark_done(first)
            assert segment_files(tmp_path) == [second.segment]
            assert spool.pending_count() == 1
            with pytest.raises(SpoolError, match="no longer in the spool"):
                spool.open_body(first)
            assert read_body(spool, second) == b"second"

    run(scenario())


def test_recovery_deletes_segments_whose_records_are_all_done(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path) as spool:
            for message in [await store(spool, b"x"), await store(spool, b"y")]:
                await spool.mark_done(message)
            assert len(segment_files(tmp_path)) == 2  # still active: kept
        async with Spool(tmp_path) as spool:
            assert await spool.recover() == []
            assert segment_files(tmp_path) == []
            assert spool.pending_count() == 0

    run(scenario())


def test_recovered_messages_can_be_marked_done(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path) as spool:
            await store(spool, b"a")
            await store(spool, b"b")
        async with Spool(tmp_path) as spool:
            old = await spool.recover()
            new = await store(spool, b"c")
            assert new.segment not in {m.segment for m in old}  # never appends to old ones
            assert spool.pending_count() == 3
            for message in old:
                await spool.mark_done(message)
            assert segment_files(tmp_path) == [new.segment]
        async with Spool(tmp_path) as spool:
            assert [m.queue_id for m in await spool.recover()] == [new.queue_id]

    run(scenario())


# -- writer and spool misuse -------------------------------------------------------------


def test_discard_removes_the_spill_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path, spill_threshold=1024) as spool:
            writer = spool.new_message()
            writer.write(b"x" * 1000)
            assert not writer.spilled
            assert list((tmp_path / "tmp").iterdir()) == []
            writer.write(b"y" * 1000)
            assert writer.spilled
            assert len(list((tmp_path / "tmp").iterdir())) == 1
            writer.discard()
            assert list((tmp_path / "tmp").iterdir()) == []
            writer.discard()  # idempotent
            with pytest.raises(ValueError, match="discarded"):
                writer.write(b"z")
            with pytest.raises(ValueError, match="discarded"):
                await spool.commit(writer, ENVELOPE)

    run(scenario())
    assert run(recovered(tmp_path)) == []


def test_writer_misuse_raises(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path) as spool, Spool(tmp_path, worker="w1") as other:
            writer = spool.new_message()
            writer.write(b"body")
            with pytest.raises(ValueError, match="another spool"):
                await other.commit(writer, ENVELOPE)
            await spool.commit(writer, ENVELOPE)
            with pytest.raises(ValueError, match="committed"):
                writer.write(b"more")
            with pytest.raises(ValueError, match="committed"):
                await spool.commit(writer, ENVELOPE)
            writer.discard()  # a no-op once committed
            late = spool.new_message()
        with pytest.raises(SpoolError, match="closed"):
            await spool.commit(late, ENVELOPE)
        with pytest.raises(SpoolError, match="closed"):
            spool.new_message()

    run(scenario())
    with pytest.raises(SpoolError, match="new"):
        Spool(tmp_path).new_message()
    with pytest.raises(ValueError, match="worker"):
        Spool(tmp_path, worker="w-1")


def test_one_worker_at_a_time_and_workers_keep_to_their_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path) as spool:
            with pytest.raises(SpoolError, match="already open"):
                await Spool(tmp_path).open()
            await store(spool, b"from w0")
            async with Spool(tmp_path, worker="w1") as w1:
                assert await w1.recover() == []
                await store(w1, b"from w1")
        async with Spool(tmp_path, worker="w1") as w1:
            assert [read_body(w1, m) for m in await w1.recover()] == [b"from w1"]

    run(scenario())


def test_spill_files_of_an_earlier_run_are_removed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Spool(tmp_path, spill_threshold=10) as spool:
            spool.new_message().write(b"never committed, never discarded")
        leftover = list((tmp_path / "tmp").iterdir())
        assert len(leftover) == 1
        (tmp_path / "tmp" / "w1-OTHERWORKER.tmp").write_bytes(b"not ours")
        async with Spool(tmp_path):
            assert [p.name for p in (tmp_path / "tmp").iterdir()] == ["w1-OTHERWORKER.tmp"]

    run(scenario())
