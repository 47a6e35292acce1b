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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pigeon import transcripts, worker_transcripts
from pigeon.auth import UserStore
from pigeon.config import Config, ConfigError, check_tls
from pigeon.delivery import MaildirAgent
from pigeon.delivery.local_checks import MailboxUsage
from pigeon.delivery.smtp import SmtpAgent
from pigeon.delivery.terminal import TerminalAgent, TerminalRegistry
from pigeon.directory import Directory, DirectoryStore
from pigeon.dns import make_resolver
from pigeon.log import event as log
from pigeon.log import event_at
from pigeon.policy import Anvil, AnvilError, RelayPolicy
from pigeon.queue.control import ControlListener
from pigeon.queue.index import QueueIndex, QueueIndexError
from pigeon.queue.scheduler import ResumeReport, Scheduler
from pigeon.queue.spool import Spool
from pigeon.web import WebService, start_web

from .context import Listener, ServerContext
from .implicit import ImplicitTLSListener
from .odmr import held_router
from .routes import directory_router
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
        anvil_column: int | None = None,
        adopt: Sequence[str] = (),
        reuse_port: bool = False,
        outbound_port: int = 25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._outbound_port = outbound_port  # other servers' SMTP port; 25 except in tests
        self._clock = clock  # the queue's clock: retries and expiry (tests move it on)
        self.worker = worker
        # Its column in the supervisor's table of client counts (data_dir/anvil); None: this
        # process is the whole server (or a tool such as pigeon fetch), whose counts are its
        # own and need no file.
        self._anvil_column = anvil_column
        self._anvil: Anvil | None = None
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
        self._index: QueueIndex | None = None
        self._directory_store: DirectoryStore | None = None
        self._control: ControlListener | None = None
        self.web: WebService | None = None  # the web UI, API and metrics (w0 only)

    @property
    def context(self) -> ServerContext:
        assert self._context is not None, "start() first"
        return self._context

    async def start(self) -> None:
        config = check_tls(self.config)
        # Raises ConfigError naming the setting; nothing has been opened yet.
        tls = ServerTLS(config.tls) if config.tls.certificate is not None else None
        self._tls = tls
        relay_password = _relay_password(config.queue.relay_password_file)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(config.spool_dir, worker=self.worker)
        await spool.open()
        users = UserStore(config.users_db)  # read on every AUTH: changes need no restart
        # Read on every lookup too: aliases, lists and users edited with the CLI take effect
        # at the next RCPT.
        self._directory_store = DirectoryStore(config.directory_db)
        directory = Directory.from_config(
            config, store=self._directory_store, user_exists=users.exists
        )

        resolver = make_resolver(config.resolver)
        # Mailbox sizes, kept by the deliveries and read by RCPT's quota check.
        usage = MailboxUsage()
        try:
            index = QueueIndex(config.queue_index)
        except QueueIndexError as error:
            await spool.close()
            raise ConfigError(f"{error}; pigeon queue check tells more") from None
        self._index = index
        queue = config.queue
        scheduler = Scheduler(
            spool,
            index=index,
            local_agent=MaildirAgent(hostname=config.hostname),
            router=held_router(directory_router(directory), config.odmr),
            hop_limit=config.directory.hop_limit,
            quota_exceeded=config.directory.quota_exceeded,
            usage=usage,
            terminal_agent=TerminalAgent(TerminalRegistry(config.data_dir)),
            remote_agent=SmtpAgent(
                hostname=config.hostname,
                resolver=resolver,
                port=self._outbound_port,
                relayhost=queue.relayhost or None,
                relay_tls=queue.relay_tls,
                relay_username=queue.relay_username or None,
                relay_password=relay_password,
            ),
            outbound_connections=queue.outbound_connections,
            destination_concurrency=queue.destination_concurrency,
            retry_base=queue.first_retry,
            retry_max=queue.max_retry_interval,
            max_lifetime=queue.lifetime,
            delay_warning=queue.delay_warning,
            clock=self._clock,
            reporting_mta=config.hostname,
            postmaster=(
                f"postmaster@{directory.primary_domain}" if directory.primary_domain else None
            ),
        )
        if self._anvil_column is None:
            self._anvil = Anvil.private()
        else:
            try:
                self._anvil = Anvil.open(config.anvil, column=self._anvil_column)
            except (OSError, AnvilError) as error:
                await spool.close()
                index.close()
                raise ConfigError(f"the table of client counts: {error}") from None
        self._context = ServerContext(
            config=config,
            directory=directory,
            relay=RelayPolicy(
                directory, config.trusted_networks, held_domains=config.odmr, usage=usage
            ),
            spool=spool,
            scheduler=scheduler,
            resolver=resolver,
            tls=tls,
            users=users,
            anvil=self._anvil,
        )
        recovered = await spool.recover()
        scheduler.start()
        report = await scheduler.resume(recovered)
        self.recovered = len(recovered)
        for name in self._adopt:
            other = Spool(config.spool_dir, worker=name)
            await other.open()
            self._adopted.append(other)
            orphans = await other.recover()
            # The index rows of that worker's messages are this worker's now.
            await asyncio.to_thread(index.claim, name, self.worker)
            adopted = await scheduler.resume(orphans, spool=other)
            report = ResumeReport(
                report.resumed + adopted.resumed,
                report.finished + adopted.finished,
                report.missing + adopted.missing,
            )
            self.recovered += len(orphans)
        if self.recovered:
            log("recovered", messages=self.recovered, finished=report.finished)
        if report.missing:
            log("queue_missing", messages=len(report.missing), fix="pigeon queue check")
        self._control = await ControlListener.open(
            config.data_dir,
            self.worker,
            scheduler.apply_requests,
            directory=self._forget_directory,
            transcripts=worker_transcripts.answer,
            private=(worker_transcripts.COMMAND,),
        )
        await scheduler.apply_requests()  # what was asked while no server ran
        if config.web.enabled:
            # In every worker, not only w0 which serves the SMTP log: the kernel gives each
            # its share of the sessions, and w0 asks the others for theirs.
            transcripts.enable(worker=self.worker)

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
        self.web = await start_web(self)

    async def _forget_directory(self) -> list[str]:
        """``pigeon alias`` and the like changed the directory store: read it afresh."""
        if self._directory_store is not None:
            self._directory_store.forget()
        return [f"{self.worker}: directory reloaded"]

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
        if self.web is not None:
            await self.web.stop()
        if self._control is not None:
            await self._control.close()
        await context.scheduler.stop()
        await context.spool.close()
        if context.users is not None:
            context.users.close()
        for other in self._adopted:
            await other.close()
        if self._index is not None:
            self._index.close()
        if self._directory_store is not None:
            self._directory_store.close()
        if self._anvil is not None:
            self._anvil.close()
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


def _relay_password(path: Path | None) -> str | None:
    """The relayhost password: the first line of its file (kept out of the config file, so
    the config can be readable by all and the password by the mail system alone)."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").splitlines()[0]
    except (OSError, UnicodeDecodeError, IndexError) as error:
        raise ConfigError(f"queue.relay_password_file: cannot read {path}: {error}") from None
