"""A listener for implicit TLS (RFC 8314, port 465): TLS from the first byte.

``loop.create_server(ssl=...)`` would fix one SSLContext for the life of the listener and
say nothing when a handshake fails. This listener accepts connections itself and hands each
to ``loop.connect_accepted_socket`` with the context current at that moment, so a SIGHUP
reload reaches the next connection, and a failed handshake is logged like one after
STARTTLS. The session (``Session``) starts once the handshake is done, on the TLS transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from pigeon.log import event_at

from .context import Listener
from .session import Session
from .tls import SHUTDOWN_TIMEOUT, ServerTLS, handshake_timeout

__all__ = ["ImplicitTLSListener"]

# After accept() fails (EMFILE: out of file descriptors), wait before trying again, as
# asyncio's own accept loop does, instead of spinning.
_ACCEPT_BACKOFF = 1.0


class ImplicitTLSListener:
    """Like an ``asyncio.Server``: ``sockets``, ``close()``, ``wait_closed()``."""

    def __init__(self, listener: Listener, tls: ServerTLS, sock: socket.socket) -> None:
        self._listener = listener
        self._tls = tls
        self._sock = sock
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: dict[asyncio.Task[None], socket.socket] = {}
        self._started: set[socket.socket] = set()  # handed to connect_accepted_socket

    @classmethod
    async def open(
        cls, listener: Listener, tls: ServerTLS, host: str, port: int, *, reuse_port: bool
    ) -> ImplicitTLSListener:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # A host name is looked up while binding: not on the event loop.
        sock = await asyncio.to_thread(
            socket.create_server, (host, port), family=family, backlog=1024, reuse_port=reuse_port
        )
        sock.setblocking(False)
        server = cls(listener, tls, sock)
        accepting = asyncio.get_running_loop().create_task(server._accept())
        # The socket is closed once nothing waits on it: closing a descriptor that the loop
        # still polls is undefined in libuv (uvloop).
        accepting.add_done_callback(lambda _: sock.close())
        server._accepting = accepting
        return server

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as error:
                event_at(logging.ERROR, "accept_failed", reason=str(error))
                await asyncio.sleep(_ACCEPT_BACKOFF)
                continue
            task = loop.create_task(self._handshake(conn, peer))
            self._handshakes[task] = conn
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        conn = self._handshakes.pop(task)
        if conn not in self._started:
            # Cancelled by close() before its first step, the task never ran: nothing else
            # will close the socket. (Once handed over, its transport closes it.)
            conn.close()
        self._started.discard(conn)

    async def _handshake(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        listener = self._listener

        def factory() -> Session:
            return Session(listener)

        self._started.add(conn)
        try:
            conn.setblocking(False)
            await loop.connect_accepted_socket(
                factory,
                conn,
                ssl=self._tls.context,  # the current one: reloads reach new connections
                ssl_handshake_timeout=handshake_timeout(listener.context.config.limits),
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
        except Exception as error:  # any failure ends the connection the same way
            client = str(peer[0]).removeprefix("::ffff:")
            reason = str(error) or type(error).__name__
            event_at(logging.WARNING, "tls_failed", client=client, reason=reason)
            conn.close()

    def close(self) -> None:
        """Accept no more connections; cut the handshakes under way."""
        for task in (self._accepting, *self._handshakes):
            if task is not None:
                task.cancel()

    async def wait_closed(self) -> None:
        tasks = [t for t in (self._accepting, *self._handshakes) if t is not None]
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
