"""The server: builds the spool, scheduler and policies, opens the listeners, shuts down.

Start-up order matters for durability: the spool is recovered and every message found in it
is handed to the scheduler before the first listener opens, so nothing accepted before a
crash waits behind new mail or is forgotten. The certificate is loaded before anything else,
so a server that could not speak TLS as configured never opens its spool.

Signals: SIGTERM (and SIGINT) stop gracefully; SIGHUP reads the certificate and key again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

from pigeon.config import Config, ConfigError, check_tls
from pigeon.delivery import MaildirAgent
from pigeon.delivery.smtp import SmtpAgent
from pigeon.directory import Directory
from pigeon.dns import make_resolver
from pigeon.log import event as log
from pigeon.log import event_at
from pigeon.policy import RelayPolicy
from pigeon.queue.scheduler import Scheduler
from pigeon.queue.spool import Spool

from .context import Listener, ServerContext
from .implicit import ImplicitTLSListener
from .session import Session
from .tls import ServerTLS

__all__ = ["Server"]


class Server:
    """One worker: listeners, sessions, spool and scheduler on one event loop.

    ``worker`` names this process's spool segments; ``adopt`` names other workers' spools
    whose mail this worker delivers (a previous run had more workers); ``reuse_port`` lets
    several workers listen on one port (SO_REUSEPORT), see ``pigeon.server.supervisor``.
    """

    def __init__(
        self,
        config: Config,
        *,
        worker: str = "w0",
        adopt: Sequence[str] = (),
        reuse_port: bool = False,
        outbound_port: int = 25,
    ) -> None:
        self.config = config
        self._outbound_port = outbound_port  # other servers' SMTP port; 25 except in tests
        self.worker = worker
        self._adopt = tuple(adopt)
        self._reuse_port = reuse_port
        self._adopted: list[Spool] = []
        self.addresses: list[tuple[str, int]] = []
        self.tls_modes: list[str] = []  # of each address: "none", "starttls" or "implicit"
        self.recovered = 0
        self._servers: list[asyncio.Server | ImplicitTLSListener] = []
        self._context: ServerContext | None = None
        self._stopped = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._tls: ServerTLS | None = None

    @property
    def context(self) -> ServerContext:
        assert self._context is not None, "start() first"
        return self._context

    async def start(self) -> None:
        config = check_tls(self.config)
        # Raises ConfigError naming the setting; nothing has been opened yet.
        tls = ServerTLS(config.tls) if config.tls.certificate is not None else None
        self._tls = tls
        config.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(config.spool_dir, worker=self.worker)
        await spool.open()
        directory = Directory(config.domains, mail_root=config.mail_dir)

        def find_maildir(recipient: str) -> Path | None:
            local, _, domain = recipient.rpartition("@")
            mailbox = directory.find(local, domain)
            return None if mailbox is None else mailbox.path

        resolver = make_resolver(config.resolver)
        scheduler = Scheduler(
            spool,
            local_agent=MaildirAgent(hostname=config.hostname),
            find_maildir=find_maildir,
            remote_agent=SmtpAgent(
                hostname=config.hostname, resolver=resolver, port=self._outbound_port
            ),
            reporting_mta=config.hostname,
            postmaster=(
                f"postmaster@{directory.primary_domain}" if directory.primary_domain else None
            ),
        )
        self._context = ServerContext(
            config=config,
            directory=directory,
            relay=RelayPolicy(directory, config.trusted_networks),
            spool=spool,
            scheduler=scheduler,
            resolver=resolver,
            tls=tls,
        )
        recovered = await spool.recover()
        scheduler.start()
        for message in recovered:
            scheduler.submit(message, recovered=True)
        self.recovered = len(recovered)
        for name in self._adopt:
            other = Spool(config.spool_dir, worker=name)
            await other.open()
            self._adopted.append(other)
            orphans = await other.recover()
            for message in orphans:
                scheduler.submit(message, recovered=True, spool=other)
            self.recovered += len(orphans)
        if recovered:
            log("recovered", messages=len(recovered))

        loop = asyncio.get_running_loop()
        for listener_config in config.listen:
            listener = Listener.build(self._context, listener_config)
            host, port = listener_config.host_port

            def factory(listener: Listener = listener) -> Session:
                return Session(listener)

            server: asyncio.Server | ImplicitTLSListener
            if listener.implicit_tls:
                assert tls is not None  # Listener.build checked
                server = await ImplicitTLSListener.open(
                    listener, tls, host, port, reuse_port=self._reuse_port
                )
            else:
                server = await loop.create_server(
                    factory,
                    host,
                    port,
                    reuse_address=True,
                    reuse_port=self._reuse_port or None,
                    backlog=1024,
                )
            self._servers.append(server)
            for sock in server.sockets:
                bound = sock.getsockname()
                self.addresses.append((str(bound[0]), int(bound[1])))
                self.tls_modes.append(listener.tls)
                log(
                    "listening",
                    address=f"{bound[0]}:{bound[1]}",
                    compat=listener_config.compat,
                    tls=listener.tls,
                )

    async def reload_tls(self) -> bool:
        """Read the certificate and key again (SIGHUP). New sessions get the new context,
        those already running keep theirs; on failure the old one stays. True if reloaded."""
        tls = self._tls
        if tls is None:
            log("reload", tls="none")
            return True
        try:
            # A few small files, but read off the event loop all the same.
            await asyncio.to_thread(tls.reload)
        except ConfigError as error:
            event_at(logging.ERROR, "tls_reload_failed", reason=str(error))
            return False
        log("tls_reloaded", certificate=tls.config.certificate)
        return True

    async def shutdown(self) -> None:
        """Graceful stop (SIGTERM): no new sessions; idle ones get 421 at once, those in the
        middle of a message finish it first; after the grace period the rest are cut."""
        context = self.context
        if context.shutting_down:
            return
        context.shutting_down = True
        log("shutdown", sessions=len(context.sessions))
        for server in self._servers:
            server.close()
        for session in list(context.sessions):
            session.shut_down()
        if context.sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.drained.wait(), context.config.limits.shutdown_grace)
        for session in list(context.sessions):
            session.abort()
        for server in self._servers:
            await server.wait_closed()
        await context.scheduler.stop()
        await context.spool.close()
        for other in self._adopted:
            await other.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Until ``shutdown()`` has finished."""
        await self._stopped.wait()

    def handle_signals(self, *, interrupt: bool = True) -> None:
        """SIGTERM (and SIGINT unless ``interrupt`` is False) ask for a graceful stop; SIGHUP
        reloads the certificate.

        Install this before ``start()``: a signal that arrives while the spool is being
        recovered is then honoured once the server is up, instead of killing it half-started.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if interrupt else (signal.SIGTERM,)
        for signum in signals:
            loop.add_signal_handler(signum, self._stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload_tls())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_until_signalled(self) -> None:
        """Serve until a signal asks to stop (see ``handle_signals``), then shut down."""
        loop = asyncio.get_running_loop()
        try:
            await self._stop_requested.wait()
            await self.shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
