"""The doorbell between ``pigeon queue`` and the running workers.

Requests travel through the queue index (``QueueIndex.add_request``); this only tells a
worker to look, and carries back what it did. Each worker listens on a Unix socket in the
abstract namespace (Linux), named after the data directory and the worker, so there is no
file to leave behind or to clean up after a crash, and no path length limit. Ringing is
harmless: a worker that is rung reads the requests waiting in the index, which only those
who can write the index can put there.

The protocol is one line each way: ``wake`` in, then the worker's report lines, then
an empty line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from pigeon.log import event

__all__ = ["ControlListener", "is_running", "ring", "socket_name"]

_WAKE = b"wake\n"
_READ_LIMIT = 1 << 20


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
        cls, data_dir: Path, worker: str, on_wake: Callable[[], Awaitable[list[str]]]
    ) -> ControlListener:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                if line != _WAKE:
                    return
                lines = await on_wake()
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


def ring(data_dir: Path, worker: str, *, timeout: float = 60.0) -> list[str] | None:
    """Wake ``worker`` and return what it did; None when no such worker is running."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_name(data_dir, worker))
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        sock.sendall(_WAKE)
        received = bytearray()
        while not received.endswith(b"\n\n") and received != b"\n":
            chunk = sock.recv(65536)
            if not chunk or len(received) > _READ_LIMIT:
                break
            received += chunk
    text = received.decode("utf-8", "replace").rstrip("\n")
    return text.split("\n") if text else []


def is_running(data_dir: Path, worker: str) -> bool:
    """Whether ``worker`` listens, asking nothing of it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(socket_name(data_dir, worker))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
    return True
