"""Linux AIO fdatasync: requests complete futures of the event loop, and refusals are raised."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pigeon.queue import linuxaio
from pigeon.queue.envelope import Envelope
from pigeon.queue.fileops import FileOps
from pigeon.queue.linuxaio import LinuxAio
from pigeon.queue.spool import Spool, SpooledMessage, SpoolError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux AIO")


def open_aio(loop: asyncio.AbstractEventLoop) -> LinuxAio:
    aio = LinuxAio.open(loop)
    assert aio is not None, "this project's machines have Linux AIO; the spool relies on it"
    return aio


def test_the_default_file_layer_syncs_through_linux_aio() -> None:
    async def scenario() -> None:
        syncs = FileOps().kernel_syncs(asyncio.get_running_loop())
        assert isinstance(syncs, LinuxAio)
        syncs.close()

    asyncio.run(scenario())


def doctor_events(
    aio: LinuxAio, change: Callable[[list[tuple[int, int]]], list[tuple[int, int]]]
) -> None:
    """Pass what io_getevents returns, as (request, result) pairs, through ``change``: a
    kernel's answers in another order, or a failed sync, which no real file here gives."""
    real = aio._syscall
    io_getevents = linuxaio._SYSCALLS[os.uname().machine][2]

    def syscall(number: ctypes.c_long, *args: Any) -> int:
        count: int = real(number, *args)
        if number.value == io_getevents and count > 0:
            events = args[3]
            answers = change([(int(e.data), int(e.res)) for e in events[:count]])
            for slot, (request, result) in zip(events, answers, strict=False):
                slot.data = request
                slot.res = result
        return count

    aio._syscall = syscall  # type: ignore[assignment]


def test_each_sync_completes_its_own_future(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [tmp_path / f"file{i}" for i in range(3)]
    # Fewer events per read than syncs in flight: the reader must read again until empty.
    monkeypatch.setattr(linuxaio, "_EVENTS_PER_READ", 4)

    async def scenario() -> None:
        aio = open_aio(asyncio.get_running_loop())
        # Request 7 failed, and its answer comes when request 1's would have (and the other
        # way round): only its own future may fail, whatever the order of the answers.
        swapped = {1: 7, 7: 1}

        def answers(got: list[tuple[int, int]]) -> list[tuple[int, int]]:
            relabelled = [(swapped.get(request, request), result) for request, result in got]
            return [(r, -errno.EIO if r == 7 else result) for r, result in relabelled]

        doctor_events(aio, answers)
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT, 0o600) for p in paths]
        try:
            futures = []
            for round_ in range(40):
                fd = fds[round_ % len(fds)]
                os.write(fd, b"record %d\n" % round_)
                futures.append(aio.fdatasync(fd))
            results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 10)
            assert [i for i, r in enumerate(results) if r is not None] == [6]
            failed = results[6]
            assert isinstance(failed, OSError)
            assert failed.errno == errno.EIO
            assert "fdatasync" in str(failed)
            # Nothing is left waiting, and a later request still completes.
            assert not aio._waiting
            later = aio.fdatasync(fds[0])
            await asyncio.wait_for(later, 10)
            assert later.done()
            assert not aio._waiting
        finally:
            for fd in fds:
                os.close(fd)
            aio.close()

    asyncio.run(scenario())
    assert (tmp_path / "file0").read_bytes().startswith(b"record 0\nrecord 3\n")


def test_a_request_the_kernel_refuses_raises_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        aio = open_aio(asyncio.get_running_loop())
        read_end, write_end = os.pipe()
        try:
            # A pipe has nothing to sync: the kernel refuses the request (EINVAL), which
            # is how the spool learns it must sync on its thread instead.
            with pytest.raises(OSError, match="io_submit") as refused:
                aio.fdatasync(write_end)
            assert refused.value.errno == errno.EINVAL
            with pytest.raises(OSError, match="io_submit") as bad:
                aio.fdatasync(write_end + 1000)
            assert bad.value.errno == errno.EBADF
            assert not aio._waiting
        finally:
            os.close(read_end)
            os.close(write_end)
            aio.close()

    asyncio.run(scenario())


def aio_events_allocated() -> int:
    return int(Path("/proc/sys/fs/aio-nr").read_text())


def test_close_waits_for_syncs_in_flight_and_stops_watching(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        before = aio_events_allocated()
        aio = open_aio(loop)
        assert aio_events_allocated() > before  # the context holds its events
        fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            in_flight = aio.fdatasync(fd)
            eventfd = aio._eventfd
            aio.close()
            assert aio_events_allocated() == before  # io_destroy gave the context back
            assert in_flight.cancelled()
            assert not loop.remove_reader(eventfd)  # no longer watched
            with pytest.raises(OSError, match="closed") as closed:
                aio.fdatasync(fd)
            assert closed.value.errno == errno.EBADF
            aio.close()  # a second close does nothing
        finally:
            os.close(fd)

    asyncio.run(scenario())


def test_a_sync_the_kernel_reports_failed_refuses_its_batch(tmp_path: Path) -> None:
    """End to end through the real Linux AIO: a failed sync is 451 for its whole batch, the
    records are cut off, and the next batch starts a fresh segment."""
    envelope = Envelope(sender="a@example.org", recipients=("b@example.net",))

    async def store(spool: Spool, body: bytes) -> SpooledMessage:
        writer = spool.new_message()
        writer.write(body)
        return await spool.commit(writer, envelope)

    async def scenario() -> tuple[SpooledMessage, SpooledMessage]:
        async with Spool(tmp_path) as spool:
            first = await store(spool, b"first")  # makes the segment: the commit thread
            aio = spool._kernel_syncs
            assert isinstance(aio, LinuxAio)
            failing = True
            doctor_events(
                aio, lambda answers: [(r, -errno.EIO if failing else res) for r, res in answers]
            )
            results = await asyncio.gather(
                *(store(spool, b"REFUSED %d" % i) for i in range(3)), return_exceptions=True
            )
            assert all(isinstance(r, SpoolError) for r in results), results
            failing = False
            after = await store(spool, b"after")
            assert after.segment != first.segment
            return first, after

    first, after = asyncio.run(scenario())

    async def recover() -> list[tuple[str, bytes]]:
        async with Spool(tmp_path) as spool:
            found = []
            for message in await spool.recover():
                with spool.open_body(message) as body:
                    found.append((message.queue_id, body.readall()))
            return found

    assert asyncio.run(recover()) == [(first.queue_id, b"first"), (after.queue_id, b"after")]
    for segment in (tmp_path / "segments").iterdir():
        assert b"REFUSED" not in segment.read_bytes()
