"""The doorbell between ``pigeon queue`` and the running workers.

Requests travel through the queue index (``QueueIndex.add_request``); this only tells a
worker to look, and carries back what it did. Each worker listens on a Unix socket in the
abstract namespace (Linux), named after the data directory and the worker, so there is no
file to leave behind or to clean up after a crash, and no path length limit. Ringing is
harmless: a worker that is rung reads the requests waiting in the index, which only those
who can write the index can put there. Commands whose answer is not for everyone (the SMTP
log shows addresses) are answered only to a peer running as the server's user or root: an
abstract socket has no file permissions, so the kernel's word on the peer (SO_PEERCRED)
stands in for them.

The protocol is one line each way: a command in (``wake``: read the requests waiting in
the index; ``directory``: the directory store changed, forget what was remembered of it),
then the worker's report lines, then an empty line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from pigeon.log import event

from .spool import spool_workers

__all__ = ["ControlListener", "announce", "is_running", "ring", "running_workers", "socket_name"]

_WAKE = "wake"
Handler = Callable[[], Awaitable[list[str]]]
_READ_LIMIT = 1 << 20
_CREDENTIALS = struct.calcsize("3i")  # struct ucred: pid, uid, gid


def socket_name(data_dir: Path, worker: str) -> str:
    """The abstract socket name of ``worker`` of the server using ``data_dir``."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:24]
    return f"\0pigeon-{digest}-{worker}"


class ControlListener:
    """The worker's end: calls ``on_wake`` for each ring and answers with its lines."""

    def __init__(self, server: asyncio.AbstractServer) -> None:
        self._server = server

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        worker: str,
        on_wake: Handler,
        *,
        private: Collection[str] = (),
        **handlers: Handler,
    ) -> ControlListener:
        """``on_wake`` answers ``wake``; ``handlers`` the other commands, by name; those named
        in ``private`` only to this user (or root)."""
        commands = {_WAKE: on_wake, **handlers}

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                command = line.decode("ascii", "replace").strip()
                handler = commands.get(command)
                if handler is None or (command in private and not _trusted_peer(writer)):
                    return
                lines = await handler()
                writer.write("".join(f"{text}\n" for text in lines).encode() + b"\n")
                await writer.drain()
            except (OSError, TimeoutError) as error:
                event("control_error", worker=worker, reason=str(error))
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        server = await asyncio.start_unix_server(serve, path=socket_name(data_dir, worker))
        return cls(server)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


def _trusted_peer(writer: asyncio.StreamWriter) -> bool:
    """Whether the process at the other end runs as this process's user, or as root."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS)
    except (OSError, AttributeError):
        return False
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid in (os.getuid(), 0)


def ring(
    data_dir: Path, worker: str, *, timeout: float = 60.0, command: str = _WAKE
) -> list[str] | None:
    """Send ``command`` (default: wake) to ``worker`` and return what it did; None when no
    such worker is running."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_name(data_dir, worker))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        sock.sendall(f"{command}\n".encode("ascii"))
        received = bytearray()
        cut = False
        while not received.endswith(b"\n\n") and received != b"\n":
            chunk = sock.recv(65536)
            if not chunk:
                break
            if len(received) > _READ_LIMIT:
                cut = True
                break
            received += chunk
    text = received.decode("utf-8", "replace").rstrip("\n")
    lines = text.split("\n") if text else []
    if cut:
        # The work is done all the same; only its account is too long to carry back whole.
        lines = [*lines[:-1], f"(the rest of the report is left out: over {_READ_LIMIT} bytes)"]
    return lines


def is_running(data_dir: Path, worker: str) -> bool:
    """Whether ``worker`` listens, asking nothing of it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(socket_name(data_dir, worker))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True


def running_workers(data_dir: Path) -> set[str]:
    """The workers of the server using ``data_dir`` that listen now, found among the
    abstract sockets the kernel lists (``/proc/net/unix``); with no such list, the workers
    that have spool segments (which may include some that do not run)."""
    prefix = "@" + socket_name(data_dir, "")[1:]
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            paths = [line.split()[-1] for line in table if line.rstrip().count(" ") >= 7]
    except OSError:
        return spool_workers(data_dir / "spool")
    return {path[len(prefix) :] for path in paths if path.startswith(prefix)}


def announce(data_dir: Path, command: str) -> int:
    """Send ``command`` to every running worker of the server using ``data_dir``; returns
    how many heard it."""
    workers = running_workers(data_dir)
    return sum(ring(data_dir, w, timeout=10, command=command) is not None for w in workers)
