"""Peers for the client tests: real servers (smtp-sink, aiosmtpd) and scripted bad ones.

Everything listens on loopback, on a port the kernel chose; every wait is bounded, and every
peer is a context manager that stops what it started.

- ``Transcript``: a callable to give ``SMTPClient``/``send`` as ``transcript=``; it keeps the
  lines, and the order of what was sent and received.
- ``ScriptedPeer``: a raw socket server running a script per connection, for peers that
  misbehave (hang up, answer garbage, stall) or speak what no real peer here offers (BDAT).
- ``SmtpSink``: Postfix's smtp-sink as a subprocess, its ``-v`` log kept in a file.
- ``AiosmtpdPeer`` with ``RecordingHandler``: aiosmtpd for STARTTLS, implicit TLS, AUTH and
  per-recipient refusals.
- ``TestCA``: a trustme CA with a certificate for localhost and 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pigeon.client import SendError

__all__ = [
    "SMTP_SINK",
    "AiosmtpdPeer",
    "PeerConnection",
    "RecordingHandler",
    "ScriptedPeer",
    "SinkAt",
    "SmtpSink",
    "TestCA",
    "Transcript",
    "esmtp_script",
    "expect_send_error",
    "free_port",
    "listening_nowhere",
    "port_is_closed",
    "resource_warnings",
]

# Postfix installs it in /usr/sbin, which is not on every user's PATH.
SMTP_SINK = shutil.which("smtp-sink") or shutil.which("smtp-sink", path="/usr/sbin")

_BIND_ATTEMPTS = 10
_WAIT = 10.0  # seconds any peer may take to start or to stop


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (callers retry when another process takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_closed(host: str, port: int) -> bool:
    """Nothing accepts connections at host:port (the connection is refused at once)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# -- transcripts ------------------------------------------------------------------------------
class Transcript:
    """Collects ``(direction, line)`` as the client reports them: ">" sent, "<" received."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, direction: str, line: str) -> None:
        with self._lock:
            self.entries.append((direction, line))

    @property
    def sent(self) -> list[str]:
        return [line for direction, line in self.entries if direction == ">"]

    @property
    def received(self) -> list[str]:
        return [line for direction, line in self.entries if direction == "<"]

    def commands(self) -> list[str]:
        """The verbs sent, upper case, in order (message text lines excluded)."""
        verbs = ("EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "QUIT", "STARTTLS")
        out = []
        for line in self.sent:
            verb = line.split(" ", 1)[0].upper()
            if verb in verbs:
                out.append(verb)
        return out

    def index(self, direction: str, prefix: str, start: int = 0) -> int:
        """Position of the first entry from ``start`` whose line starts with ``prefix``."""
        for position in range(start, len(self.entries)):
            entry_direction, line = self.entries[position]
            if entry_direction == direction and line.startswith(prefix):
                return position
        raise AssertionError(f"no {direction}{prefix!r} in transcript: {self.entries}")

    def text(self) -> str:
        return "\n".join(direction + line for direction, line in self.entries)


# -- raw scripted peers -----------------------------------------------------------------------
class PeerConnection:
    """One accepted connection, as a script sees it. Reads time out (``timeout``)."""

    def __init__(self, sock: socket.socket, stop: threading.Event, timeout: float) -> None:
        self.sock = sock
        self.stop = stop
        self._buf = b""
        sock.settimeout(timeout)
        self.received: list[bytes] = []  # every command line read, without CRLF

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One line without its CRLF; raises EOFError when the client hangs up."""
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        self.received.append(line)
        return line

    def exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed the connection")
            self._buf += chunk
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def until_dot(self) -> bytes:
        """DATA text up to its last CRLF (the terminating ".CRLF" dropped), still dot-stuffed."""
        while b"\r\n.\r\n" not in b"\r\n" + self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed the connection")
            self._buf += chunk
        whole = b"\r\n" + self._buf
        end = whole.index(b"\r\n.\r\n")
        text = whole[2 : end + 2]
        self._buf = whole[end + 5 :]
        return text

    def stall(self, limit: float = _WAIT) -> None:
        """Say nothing until the peer is stopped (or ``limit`` seconds pass)."""
        self.stop.wait(limit)

    def reset(self) -> None:
        """Close with a TCP reset: the client's next read or write fails at once."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Script = Callable[[PeerConnection], None]


class ScriptedPeer:
    """A TCP server on ``host`` (port 0) that runs ``script`` for each connection, in turn.

    Errors a script raises because the client went away are expected and kept in
    ``errors`` rather than raised; a test that cares looks at them."""

    def __init__(self, script: Script, *, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.script = script
        self.timeout = timeout
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind((host, 0))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.connections: list[PeerConnection] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="scripted-peer", daemon=True)

    def __enter__(self) -> ScriptedPeer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(_WAIT)
        self._listener.close()
        assert not self._thread.is_alive(), "the scripted peer did not stop"

    @property
    def accepted(self) -> int:
        return len(self.connections)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection = PeerConnection(sock, self._stop, self.timeout)
            self.connections.append(connection)
            try:
                self.script(connection)
            except (OSError, EOFError) as error:
                self.errors.append(error)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()


def esmtp_script(
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME"),
    *,
    rcpt: Callable[[bytes], bytes] | None = None,
    chunks: list[bytes] | None = None,
    messages: list[bytes] | None = None,
) -> Script:
    """A small well-behaved ESMTP server: it offers ``extensions``, answers RCPT with
    ``rcpt(line)`` (default 250), and keeps BDAT chunks / DATA texts in the given lists."""

    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        while True:
            line = peer.line()
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                lines = [b"peer.test", *(e.encode() for e in extensions)]
                peer.send(
                    b"".join(
                        b"250" + (b" " if i == len(lines) - 1 else b"-") + text + b"\r\n"
                        for i, text in enumerate(lines)
                    )
                )
            elif verb == b"RCPT":
                peer.send(rcpt(line) if rcpt else b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                peer.send(b"354 go ahead\r\n")
                text = peer.until_dot()
                if messages is not None:
                    messages.append(text)
                peer.send(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"BDAT":
                words = line.split()
                data = peer.exactly(int(words[1]))
                if chunks is not None:
                    chunks.append(data)
                last = len(words) > 2 and words[2].upper() == b"LAST"
                peer.send(b"250 2.0.0 Ok: queued\r\n" if last else b"250 2.0.0 chunk Ok\r\n")
            elif verb == b"QUIT":
                peer.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                peer.send(b"250 2.0.0 Ok\r\n")

    return script


# -- Postfix's smtp-sink ----------------------------------------------------------------------
class SmtpSink:
    """``smtp-sink -v [options] 127.0.0.1:PORT 100`` with its conversation log in ``log_path``."""

    def __init__(self, log_path: Path, *options: str) -> None:
        assert SMTP_SINK is not None, "smtp-sink is not installed"
        self.options = options
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        assert SMTP_SINK is not None
        user = ["-u", "root"] if os.geteuid() == 0 else []
        for _ in range(_BIND_ATTEMPTS):
            port = free_port()
            with self.log_path.open("wb") as log:
                process = subprocess.Popen(
                    [SMTP_SINK, *user, "-v", *self.options, f"127.0.0.1:{port}", "100"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_listening(process, port):
                self.process, self.port = process, port
                return self
            _stop(process)  # most likely the port was taken in the meantime: try another
        raise AssertionError(f"smtp-sink did not start: {self.log()}")

    @staticmethod
    def _wait_listening(process: subprocess.Popen[bytes], port: int) -> bool:
        deadline = time.monotonic() + _WAIT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as probe:
                    probe.settimeout(2)
                    return probe.recv(100).startswith(b"220")
            except OSError:
                time.sleep(0.02)
        return False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            _stop(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def commands(self) -> list[str]:
        """The command lines smtp-sink logged (``smtp-sink: EHLO x`` -> ``EHLO x``)."""
        out = []
        for line in self.log().splitlines():
            _, sep, rest = line.partition("smtp-sink: ")
            if sep and rest.split(" ", 1)[0].upper() in (
                "EHLO",
                "HELO",
                "MAIL",
                "RCPT",
                "DATA",
                "RSET",
                "QUIT",
                "BDAT",
                ".",
            ):
                out.append(rest)
        return out


class SinkAt(SmtpSink):
    """smtp-sink on a given host and port, its ``-v`` log in ``log_path``."""

    def __init__(self, log_path: Path, host: str, port: int, *options: str) -> None:
        super().__init__(log_path, *options)
        self.host, self.wanted = host, port

    def __enter__(self) -> SinkAt:
        assert SMTP_SINK is not None
        user = ["-u", "root"] if os.geteuid() == 0 else []
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [SMTP_SINK, *user, "-v", *self.options, f"{self.host}:{self.wanted}", "100"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.port = self.wanted
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"smtp-sink stopped: {self.log()}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as probe:
                    probe.settimeout(2)
                    if probe.recv(100)[:1].isdigit():  # any greeting, even a refusal
                        return self
            except OSError:
                time.sleep(0.02)
        self.__exit__(None, None, None)
        raise AssertionError(f"smtp-sink did not start: {self.log()}")

    def sessions(self) -> int:
        """Connections that said EHLO (the start-up probe never does)."""
        return sum(1 for command in self.commands() if command.upper().startswith("EHLO"))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(_WAIT)


# -- aiosmtpd ---------------------------------------------------------------------------------
class RecordingHandler:
    """An aiosmtpd handler that records what it got and refuses chosen recipients.

    ``refuse`` maps a recipient address to the reply line RCPT gets (e.g. "451 4.3.0 later");
    ``users`` is what AUTH accepts (user -> password)."""

    def __init__(
        self,
        refuse: dict[str, str] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.refuse = refuse or {}
        self.users = users or {}
        self.messages: list[tuple[str, list[str], bytes, list[str]]] = []
        self.resets = 0
        self.logins: list[tuple[str, str]] = []  # (mechanism, user) that succeeded

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.refuse.get(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), bytes(content), envelope.mail_options)
        )
        return "250 2.0.0 Message accepted"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self.resets += 1
        return "250 2.0.0 OK"

    def authenticator(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            if self.users.get(user) == auth_data.password.decode():
                self.logins.append((mechanism, user))
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class AiosmtpdPeer:
    """aiosmtpd's threaded ``Controller`` on 127.0.0.1 and a free port.

    ``ssl_context`` gives implicit TLS; ``tls_context`` (in ``smtp``) gives STARTTLS."""

    def __init__(
        self,
        handler: RecordingHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **smtp: Any,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.smtp = smtp
        self.port = 0
        self._controller: Any = None

    def __enter__(self) -> AiosmtpdPeer:
        last: BaseException | None = None
        for _ in range(_BIND_ATTEMPTS):
            port = free_port()
            controller = Controller(
                self.handler,
                hostname="127.0.0.1",
                port=port,
                ssl_context=self.ssl_context,
                server_hostname="peer.test",
                ready_timeout=_WAIT,
                **self.smtp,
            )
            try:
                controller.start()
            except OSError as error:  # the port was taken in the meantime
                last = error
                with contextlib.suppress(Exception):
                    controller.stop(no_assert=True)
                if not controller.loop.is_closed():
                    controller.loop.close()
                continue
            self._controller, self.port = controller, port
            return self
        raise AssertionError(f"aiosmtpd did not start: {last}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._controller is not None:
            self._controller.stop()


# -- TLS --------------------------------------------------------------------------------------
class TestCA:
    """A throwaway CA (trustme) and a server certificate for localhost and 127.0.0.1."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def write_ca(self, path: Path) -> Path:
        self.ca.cert_pem.write_to_path(str(path))
        return path


@contextlib.contextmanager
def listening_nowhere(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that refuses connections (bound, never listening, for the block)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((host, 0))
        yield holder.getsockname()[1]


@contextlib.contextmanager
def resource_warnings() -> Iterator[list[str]]:
    """Collect the ResourceWarnings (unclosed sockets and transports) of the block.

    The garbage is collected before the block ends, so what the block leaked is found here
    and not, at random, in a later test. A test that cares asserts the list is empty."""
    leaks: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            yield leaks
        finally:
            gc.collect()
            leaks.extend(str(w.message) for w in caught if issubclass(w.category, ResourceWarning))
            for w in caught:
                if not issubclass(w.category, ResourceWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def expect_send_error(call: Callable[[], object]) -> tuple[SendError, list[str]]:
    """Run ``call``, which must raise ``SendError``; return the error and what leaked.

    The error comes back without its traceback and context: those hold the frames, and the
    frames the client and its socket, which would otherwise outlive the garbage collection
    done here (and warn, unclosed, in whatever test runs next)."""
    with resource_warnings() as leaks:
        try:
            call()
        except SendError as error:
            error.__traceback__ = None
            error.__context__ = None
            error.__cause__ = None
            caught = error
        else:
            raise AssertionError("no SendError was raised")
    return caught, leaks
