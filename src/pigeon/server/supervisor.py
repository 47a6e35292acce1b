"""Several worker processes on one port: ``pigeon serve --workers N``.

Python runs one thread of Python at a time, so one process uses one core. The supervisor
starts N workers, each a whole ``Server`` (sessions, spool, scheduler) on its own event loop,
all listening on the same address with SO_REUSEPORT so the kernel spreads connections
between them. Each worker writes its own spool segments (``w0``, ``w1``, ...), so they share
the data directory without locking each other; Maildir delivery is safe from any process.

The supervisor itself holds no mail. It binds each listening port first (so port 0 becomes
a real port that every worker then shares), hands a worker the spools of workers that no
longer exist (a previous run with more workers), restarts a worker that dies, and on SIGTERM
asks every worker to stop gracefully and waits for them, as Postfix's master does. SIGHUP is
passed on to every worker, each of which reloads its TLS certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

from pigeon import metrics
from pigeon.config import Config
from pigeon.log import configure_logging
from pigeon.log import event as log
from pigeon.policy import Anvil
from pigeon.queue.spool import spool_workers

from .app import Server
from .loop import settle_collector, use_uvloop

__all__ = ["Supervisor", "worker_name"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
# A worker that dies this soon after starting is not restarted in a tight loop.
_RESTART_BACKOFF = 1.0


def _die_with_parent() -> None:
    """If the supervisor is killed (SIGKILL, OOM), its workers must not live on: they would
    hold the port and their spool locks, and a restarted server could not take over. Linux
    delivers SIGKILL to this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def worker_name(index: int) -> str:
    return f"w{index}"


class Supervisor:
    def __init__(self, config: Config, workers: int, *, log_level: int) -> None:
        if workers < 2:
            raise ValueError("the supervisor is for two or more workers")
        self.config = config
        self.workers = workers
        self._log_level = log_level
        self._context = multiprocessing.get_context("spawn")
        self._processes: dict[int, BaseProcess] = {}
        self._stopping = False
        self.addresses: list[tuple[str, int]] = []
        self._placeholders: list[socket.socket] = []

    def bind(self) -> Config:
        """Pick the real port of every listener; return the config the workers get.

        A socket bound with SO_REUSEPORT (and not listening) holds each port until the
        workers have bound it too, so a port chosen by the kernel cannot be taken meanwhile.
        """
        listeners = []
        for listener in self.config.listen:
            host, port = listener.host_port
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            bound = sock.getsockname()
            self._placeholders.append(sock)
            self.addresses.append((str(bound[0]), int(bound[1])))
            address = (
                f"[{bound[0]}]:{bound[1]}"
                if family == socket.AF_INET6
                else f"{bound[0]}:{bound[1]}"
            )
            listeners.append(replace(listener, address=address))
        limits = self.config.limits
        # The connection limit is for the whole server: each worker takes its share.
        share = max(1, -(-limits.connections // self.workers))
        return replace(
            self.config,
            listen=tuple(listeners),
            limits=replace(limits, connections=share),
        )

    def _adoptions(self) -> dict[int, list[str]]:
        """Spools of workers that will not run now, shared out among those that will."""
        active = {worker_name(i) for i in range(self.workers)}
        orphans = sorted(spool_workers(self.config.spool_dir) - active)
        plan: dict[int, list[str]] = {i: [] for i in range(self.workers)}
        for n, name in enumerate(orphans):
            plan[n % self.workers].append(name)
        return plan

    def start(self, worker_config: Config) -> None:
        # Before any worker exists, so that none misses a SIGHUP sent once the port is open,
        # and a SIGTERM sent as soon as the banner shows stops the server cleanly rather
        # than killing the supervisor before run() is reached.
        signal.signal(signal.SIGHUP, self._on_hangup)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        # Each worker counts into files there, so /metrics (served by w0) shows them all.
        metrics.use_directory(self.config.data_dir)
        # The counts per client that every worker shares, one column each: a limit per
        # address or user is the server's, wherever the kernel sends each connection.
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        Anvil.create(self.config.anvil, columns=self.workers)
        ready: list[multiprocessing.connection.Connection] = []
        for index, adopt in self._adoptions().items():
            ready.append(self._spawn(worker_config, index, adopt))
        for index, conn in enumerate(ready):
            if not self._wait_ready(index, conn):
                self._stop()
                raise RuntimeError(f"worker {worker_name(index)} did not start; see its log")
        for sock in self._placeholders:
            sock.close()
        self._placeholders.clear()
        self._worker_config = worker_config

    def _spawn(
        self, config: Config, index: int, adopt: list[str]
    ) -> multiprocessing.connection.Connection:
        parent, child = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker_main,
            args=(config, index, adopt, child, self._log_level),
            name=f"pigeon-{worker_name(index)}",
            daemon=False,
        )
        process.start()
        child.close()
        self._processes[index] = process
        return parent

    def _wait_ready(self, index: int, conn: multiprocessing.connection.Connection) -> bool:
        """Until the worker says it listens, or dies, or a minute has passed."""
        process = self._processes[index]
        waited = multiprocessing.connection.wait([conn, process.sentinel], timeout=60)
        if conn not in waited:
            return False
        try:
            return bool(conn.recv() == "ready")
        except EOFError:
            return False

    def run(self) -> int:
        """Watch the workers until SIGTERM/SIGINT; restart any that dies. Returns the exit
        status: 0 after a clean stop."""
        started = {index: time.monotonic() for index in self._processes}
        while not self._stopping:
            sentinels = {p.sentinel: i for i, p in self._processes.items()}
            ready = multiprocessing.connection.wait(list(sentinels), timeout=1.0)
            for sentinel in ready:
                if self._stopping:
                    break
                index = sentinels[sentinel]  # type: ignore[index]
                process = self._processes[index]
                process.join()
                log("worker_exit", worker=worker_name(index), status=process.exitcode)
                if process.pid is not None:
                    metrics.forget_process(process.pid)
                if time.monotonic() - started[index] < _RESTART_BACKOFF:
                    time.sleep(_RESTART_BACKOFF)
                conn = self._spawn(self._worker_config, index, [])
                self._wait_ready(index, conn)
                started[index] = time.monotonic()
        return self._stop()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _on_hangup(self, signum: int, frame: object) -> None:
        """SIGHUP: every worker reloads its certificate (a worker started later reads the
        files anew anyway)."""
        log("reload", workers=len(self._processes))
        for process in list(self._processes.values()):
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGHUP)

    def _stop(self) -> int:
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.shutdown_grace + 10
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
        status = 0
        for process in self._processes.values():
            if process.is_alive():
                process.kill()
                process.join(5)
                status = 1
        return status


def _worker_main(
    config: Config,
    index: int,
    adopt: list[str],
    ready: multiprocessing.connection.Connection,
    log_level: int,
) -> None:
    """A worker process: one ``Server``, stopped gracefully by SIGTERM."""
    _die_with_parent()
    configure_logging(log_level)
    # SIGINT from a terminal reaches every process of the group; the supervisor decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGHUP before the server handles it must not kill a worker that is starting (the
    # certificate it is about to read is the current one anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    use_uvloop()

    async def serve() -> None:
        server = Server(
            config, worker=worker_name(index), anvil_column=index, adopt=adopt, reuse_port=True
        )
        server.handle_signals(interrupt=False)
        settle_collector()
        await server.start()
        ready.send("ready")
        ready.close()
        await server.run_until_signalled()

    asyncio.run(serve())
