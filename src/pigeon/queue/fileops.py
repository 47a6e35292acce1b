"""The file-system calls the spool makes, gathered in one class.

The spool's promise (250 only after fsync) is about what happens when those calls fail or
stall, and the only honest way to test that is to make them fail or stall on purpose. Every
call that writes, syncs, truncates or removes spool data goes through a :class:`FileOps`, so
a test can subclass it, make a call raise ``OSError`` or block on an event, and count calls.
Production code uses the default instance, which is a thin layer over :mod:`os`.

Syncs take two roads. A batch written on the commit thread calls :meth:`FileOps.fdatasync`
there; a small batch written by the event loop asks the object that
:meth:`FileOps.kernel_syncs` returned, whose ``fdatasync`` only starts the sync and returns
a future. A test that fails or stalls syncs must cover both: override ``kernel_syncs`` too
(or make it return None, which sends every batch to the commit thread).

The zeros that prepare a segment ahead of its records are written and synced by one call,
:meth:`FileOps.fill_zeros`, on the housekeeping thread; no commit waits for it unless its
records would land on that stretch.

Most methods run on the spool's threads, where an override may block. Some run on the event
loop, where it must not: opening, appending to, closing and removing spill files
(:meth:`pigeon.queue.spool.MessageWriter.write`), and ``pwritev`` and ``close`` of a segment
written by the loop.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pigeon.queue.linuxaio import LinuxAio

if TYPE_CHECKING:
    import asyncio

    from _typeshed import ReadableBuffer, StrOrBytesPath

__all__ = ["FileOps", "KernelSyncs"]


_ZERO_CHUNK = 1 << 20


def _datasync(fd: int) -> None:
    # fdatasync flushes the data and the metadata needed to read it back (the size), not
    # timestamps: all a spool record needs. macOS has no fdatasync.
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS
        os.fsync(fd)


class KernelSyncs(Protocol):
    """fdatasync requests that complete without a thread of ours, on one event loop."""

    def fdatasync(self, fd: int) -> asyncio.Future[None]:
        """Start syncing ``fd``; raise ``OSError`` if the request cannot even start."""
        ...

    def close(self) -> None:
        """Release the mechanism; requests still in flight are waited for."""
        ...


class FileOps:
    """Thin wrappers over :mod:`os`; subclass to inject faults or count calls."""

    def open(self, path: StrOrBytesPath, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | getattr(os, "O_CLOEXEC", 0), mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def write(self, fd: int, data: ReadableBuffer) -> int:
        return os.write(fd, data)

    def pwritev(self, fd: int, buffers: Sequence[ReadableBuffer], offset: int) -> int:
        """Write ``buffers`` at ``offset``; may write less than all (the caller loops)."""
        if hasattr(os, "pwritev"):
            return os.pwritev(fd, buffers, offset)
        return os.pwrite(fd, buffers[0], offset)  # pragma: no cover - platforms without it

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def copy_file_range(
        self, src: int, dst: int, count: int, offset_src: int, offset_dst: int
    ) -> int:
        """Copy in the kernel; raises ``OSError(ENOSYS)`` where the call does not exist."""
        if not hasattr(os, "copy_file_range"):  # pragma: no cover - non-Linux
            raise OSError(errno.ENOSYS, "copy_file_range is not available")
        return os.copy_file_range(src, dst, count, offset_src, offset_dst)

    def fdatasync(self, fd: int) -> None:
        _datasync(fd)

    def dup(self, fd: int) -> int:
        return os.dup(fd)

    def fill_zeros(self, fd: int, start: int, end: int) -> None:
        """Write zeros over ``[start, end)`` of ``fd`` and sync them: how the spool prepares
        a segment ahead of its records (see "Preparing segments" in :mod:`pigeon.queue.spool`).

        One method rather than writes and a sync, so that a test counting or failing the
        syncs of commits is not disturbed by this work, which no commit waits for.
        """
        zeros = memoryview(bytes(min(_ZERO_CHUNK, end - start)))
        while start < end:
            written = os.pwrite(fd, zeros[: end - start], start)
            if written <= 0:
                raise OSError(errno.EIO, "pwrite wrote nothing")
            start += written
        _datasync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def kernel_syncs(self, loop: asyncio.AbstractEventLoop) -> KernelSyncs | None:
        """The asynchronous fdatasync the commit path uses when it can (Linux AIO).

        None means there is none here, and every batch syncs on the commit thread through
        :meth:`fdatasync`.
        """
        return LinuxAio.open(loop)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def unlink(self, path: StrOrBytesPath) -> None:
        os.unlink(path)

    def rename(self, src: StrOrBytesPath, dst: StrOrBytesPath) -> None:
        os.rename(src, dst)
