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
import errno
import logging
import socket

from pigeon.log import event_at

from .context import Listener
from .session import Session
from .tls import SHUTDOWN_TIMEOUT, ServerTLS, handshake_timeout

__all__ = ["ImplicitTLSListener"]

# After accept() fails for want of resources (EMFILE: out of file descriptors), wait before
# trying again, as asyncio's own server does, instead of spinning.
_ACCEPT_BACKOFF = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Connections taken per wake-up, so that a flood does not starve the sessions.
_ACCEPT_BATCH = 100


class ImplicitTLSListener:
    """Like an ``asyncio.Server``: ``sockets``, ``close()``, ``wait_closed()``.

    Connections are accepted in a reader callback, as asyncio's own server does it, not by
    awaiting ``sock_accept``: a cancelled await could drop a connection just accepted."""

    def __init__(self, listener: Listener, tls: ServerTLS, sock: socket.socket) -> None:
        self._listener = listener
        self._tls = tls
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._serving = False
        self._retry: asyncio.TimerHandle | None = None
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
        server._start_serving()
        return server

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def _start_serving(self) -> None:
        self._retry = None
        if self._sock.fileno() >= 0:
            self._serving = True
            self._loop.add_reader(self._sock, self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # nothing more waiting, or a client gone before we took it
            except OSError as error:
                if error.errno not in _OUT_OF_RESOURCES:
                    raise
                event_at(logging.ERROR, "accept_failed", reason=str(error))
                self._loop.remove_reader(self._sock)
                self._serving = False
                self._retry = self._loop.call_later(_ACCEPT_BACKOFF, self._start_serving)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._handshake(conn, peer))
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
        listener = self._listener

        def factory() -> Session:
            return Session(listener)

        self._started.add(conn)
        try:
            await self._loop.connect_accepted_socket(
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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._serving:
            self._loop.remove_reader(self._sock)
            self._serving = False
        self._sock.close()
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._handshakes, return_exceptions=True)
