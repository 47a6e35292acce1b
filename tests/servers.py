"""Running Pigeon for end-to-end tests: in a thread of this process, or as a real process.

Every server listens on 127.0.0.1 port 0 (the kernel picks a free port) and keeps its data
in the test's tmp_path. Every wait below is bounded.
"""

from __future__ import annotations

import asyncio
import importlib
import mailbox
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import trustme

from pigeon.config import Config, DomainConfig, Limits, ListenerConfig, TLSConfig, WebConfig
from pigeon.server import Server

T = TypeVar("T")

__all__ = [
    "PigeonProcess",
    "ThreadedServer",
    "make_config",
    "read_maildir",
    "tls_config",
    "tls_listeners",
    "wait_for",
]


def make_config(data_dir: Path, **overrides: object) -> Config:
    """A test configuration: loopback, port 0, domain example.test with alice and bob."""
    listener = ListenerConfig(address="127.0.0.1:0")
    compat = overrides.pop("compat", None)
    if compat is not None:
        listener = replace(listener, compat=compat)  # type: ignore[arg-type]
    vrfy = overrides.pop("vrfy", None)
    if vrfy is not None:
        listener = replace(listener, vrfy=vrfy)  # type: ignore[arg-type]
    config = Config(
        hostname="mx.example.test",
        data_dir=data_dir,
        listen=(listener,),
        domains={"example.test": DomainConfig(users=("alice", "bob"))},
        limits=Limits(min_free_disk=0),
        # No web UI unless a test asks for one: port 8025 is not the tests' to take.
        web=WebConfig(enabled=False),
    )
    return replace(config, **overrides)  # type: ignore[arg-type]


def tls_config(cert: trustme.LeafCert, directory: Path, **overrides: object) -> TLSConfig:
    """Write ``cert`` (from a trustme CA) and its key as PEM files; the [tls] that names them."""
    directory.mkdir(parents=True, exist_ok=True)
    certificate, key = directory / "cert.pem", directory / "key.pem"
    for index, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(certificate), append=index > 0)
    cert.private_key_pem.write_to_path(str(key))
    return replace(TLSConfig(certificate=certificate, key=key), **overrides)  # type: ignore[arg-type]


def tls_listeners() -> tuple[ListenerConfig, ...]:
    """Two loopback listeners: STARTTLS first (``port``), implicit TLS second."""
    return (
        ListenerConfig(address="127.0.0.1:0", tls="starttls"),
        ListenerConfig(address="127.0.0.1:0", tls="implicit"),
    )


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read_maildir(path: Path) -> list[bytes]:
    """Every message in the Maildir at ``path`` (new/ and cur/), as bytes, oldest first."""
    if not all((path / sub).is_dir() for sub in ("tmp", "new", "cur")):
        return []  # not there yet, or being created by the delivery agent right now
    box = mailbox.Maildir(path, factory=None, create=False)
    keys = sorted(box.keys())
    return [box.get_bytes(key) for key in keys]


class ThreadedServer:
    """A Pigeon server on its own event loop in a background thread: uvloop when it is
    installed, as ``pigeon serve`` runs, unless ``uvloop=False`` asks for asyncio's own."""

    def __init__(
        self,
        config: Config,
        *,
        uvloop: bool = True,
        outbound_port: int = 25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._uvloop = uvloop
        self._server = Server(config, outbound_port=outbound_port, clock=clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pigeon-test-server", daemon=True)

    @property
    def server(self) -> Server:
        return self._server

    @property
    def port(self) -> int:
        return self._server.addresses[0][1]

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def address_of(self, index: int) -> tuple[str, int]:
        """The address of the ``index``-th listener (in the order of the configuration)."""
        return ("127.0.0.1", self._server.addresses[index][1])

    def _run(self) -> None:
        # The same event loop as `pigeon serve`: uvloop when it is installed.
        try:
            if not self._uvloop:
                raise ImportError("asyncio's loop asked for")
            uvloop = importlib.import_module("uvloop")
            loop = uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except BaseException as error:  # surfaced to the test in __enter__/stop
            self._error = error
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.start()
        self._ready.set()
        await self._server.wait_stopped()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the scheduler has nothing queued or in flight."""
        self.call(self._server.context.scheduler.wait_idle(), timeout)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        if not self._ready.wait(20):
            raise AssertionError("server did not start within 20 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self.call(self._server.shutdown(), 60)
        self._thread.join(30)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LISTENING = re.compile(r"pigeon: listening on (?P<host>\S+):(?P<port>\d+)")


class PigeonProcess:
    """``pigeon serve`` as a real process, for tests that signal or kill it."""

    def __init__(self, args: Sequence[str], *, cwd: Path, timeout: float = 20.0) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pigeon", "serve", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.banner: list[str] = []
        self.port = 0
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.banner.append(line.rstrip("\n"))
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group("port"))
            if "; spool in " in line:
                break
        if not self.port:
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"pigeon serve did not start: {self.banner} {err}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        """Kill if still running, and close the pipes (read ``stderr()`` before)."""
        self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()
