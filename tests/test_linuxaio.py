"""Linux AIO fdatasync: requests complete futures of the event loop, and refusals are raised."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from pathlib import Path

import pytest

from pigeon.queue.fileops import FileOps
from pigeon.queue.linuxaio import LinuxAio

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


def test_each_sync_completes_its_own_future(tmp_path: Path) -> None:
    paths = [tmp_path / f"file{i}" for i in range(3)]

    async def scenario() -> None:
        aio = open_aio(asyncio.get_running_loop())
        fds = [os.open(p, os.O_WRONLY | os.O_CREAT, 0o600) for p in paths]
        try:
            futures = []
            for round_ in range(40):  # more than one io_getevents read can return at once
                fd = fds[round_ % len(fds)]
                os.write(fd, b"record %d\n" % round_)
                futures.append(aio.fdatasync(fd))
            results = await asyncio.wait_for(asyncio.gather(*futures), 10)
            assert results == [None] * 40
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


def test_close_waits_for_syncs_in_flight_and_stops_watching(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        aio = open_aio(loop)
        fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"x" * 4096)
            in_flight = aio.fdatasync(fd)
            eventfd = aio._eventfd
            aio.close()
            assert in_flight.cancelled()
            assert not loop.remove_reader(eventfd)  # no longer watched
            with pytest.raises(OSError, match="closed") as closed:
                aio.fdatasync(fd)
            assert closed.value.errno == errno.EBADF
            aio.close()  # a second close does nothing
        finally:
            os.close(fd)

    asyncio.run(scenario())
