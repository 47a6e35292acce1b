"""Serving the web app from inside a running worker, on its event loop, with uvicorn.

Only worker ``w0`` serves HTTP (see the package docstring for why). A web UI that cannot
start (its port is taken, say) is logged as an error and the mail server goes on without it:
mail matters more than the view of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from pigeon.config import ConfigError, parse_host_port
from pigeon.log import event, event_at

if TYPE_CHECKING:
    import uvicorn

    from pigeon.server.app import Server

    from .context import WebContext

__all__ = ["WebService", "start_web"]

_START_TIMEOUT = 10.0


class WebService:
    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], context: WebContext, address: str
    ) -> None:
        self._server = server
        self._task = task
        self.context = context
        self.address = address  # host:port actually bound

    @property
    def url(self) -> str:
        host, port = parse_host_port(self.address, default_port=80)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    async def stop(self) -> None:
        self.context.stopping.set()  # live streams end now
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, 10)
        self.context.close()


def _bind(address: str) -> socket.socket:
    host, port = parse_host_port(address, default_port=8025)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def start_web(server: Server) -> WebService | None:
    """Start the web app for ``server`` if its configuration asks for one and it is ``w0``."""
    config = server.config
    if not config.web.enabled or server.worker != "w0":
        return None
    # Imported here: a server without the web UI does not pay for FastAPI's import.
    import uvicorn  # noqa: PLC0415

    from .app import create_app  # noqa: PLC0415
    from .context import ListenerInfo, ServerStatus, WebContext  # noqa: PLC0415

    try:
        sock = _bind(config.web.address)
    except (OSError, ConfigError) as error:
        event_at(logging.ERROR, "web_failed", address=config.web.address, reason=str(error))
        return None
    bound = sock.getsockname()
    address = (
        f"[{bound[0]}]:{bound[1]}" if sock.family == socket.AF_INET6 else f"{bound[0]}:{bound[1]}"
    )
    status = ServerStatus(
        worker=server.worker,
        listeners=[
            ListenerInfo(f"{host}:{port}", tls, listener.role)
            for (host, port), tls, listener in zip(
                server.addresses, server.tls_modes, config.listen, strict=False
            )
        ],
        sessions=lambda: len(server.context.sessions),
        started=time.time(),
    )
    context = WebContext.open(config, status)
    app = create_app(context)
    uv_config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        # X-Forwarded-Proto from a proxy on this machine says whether cookies need Secure.
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
    )
    web = _embedded_server(uv_config)
    task = asyncio.get_running_loop().create_task(web.serve(sockets=[sock]), name="web")
    deadline = time.monotonic() + _START_TIMEOUT
    # uvicorn has no event for "listening": its flag is polled, briefly and boundedly.
    while not web.started and not task.done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if not web.started:
        web.should_exit = True
        event_at(logging.ERROR, "web_failed", address=address, reason="did not start")
        context.close()
        return None
    event("web_listening", address=address, url=f"http://{address}/")
    return WebService(web, task, context, address)


def _embedded_server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn in someone else's process: the mail server owns the signals, not uvicorn."""
    import uvicorn  # noqa: PLC0415 (see start_web)

    class EmbeddedServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer(config)
