"""Users' terminals: live sessions that show SEND, SOML and SAML messages as they arrive.

RFC 821 section 3.5 delivers these to "the user's terminal" rather than (or besides) the
mailbox. Here a terminal is a program a user keeps open: ``pigeon watch``, or the web UI's
live inbox. Any worker process may deliver to any terminal, so terminals are found on disk,
never in one process's memory:

* Each terminal listens on its own Unix socket in the abstract namespace (Linux): nothing to
  clean up after a crash, and no 108-octet path limit (data directories can be deep).
* It registers in ``<data_dir>/terminals/`` (mode 0700) with a file (0600) naming the user,
  the socket and a random token. Anyone on the host may connect to an abstract socket; only
  the mail system's user can read the token, and a terminal shows nothing without it.
* A registration whose socket refuses connections belongs to a terminal that died without
  removing it; whoever finds it removes it.

One delivery per connection: the deliverer sends a JSON line (the token, sender, recipient,
queue id, arrival time and the size of the text), then that many octets of the message; the
terminal answers ``ok`` once it has shown it.

Library users (the web UI) register a terminal with ``open_terminal``::

    async def show(message: TerminalMessage) -> None:
        print(message.sender, message.subject, message.text)

    async with open_terminal(data_dir, "alice@example.test", show):
        ...  # alice is "logged on" while this block runs
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import email.utils
import hashlib
import inspect
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from pigeon.log import event, event_at
from pigeon.queue.envelope import Envelope

__all__ = [
    "MAX_TERMINAL_TEXT",
    "TerminalAgent",
    "TerminalMessage",
    "TerminalRegistry",
    "open_terminal",
]

# A terminal shows a note, not an archive: the first MiB of a message is plenty, and bounds
# what one delivery may make a watcher hold.
MAX_TERMINAL_TEXT = 1 << 20
_HEADER_LIMIT = 64 * 1024
_TIMEOUT = 10.0  # seconds a terminal has to show a message and say so
_OK = b"ok\n"

OnMessage = Callable[["TerminalMessage"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class TerminalMessage:
    """A message as a terminal receives it: the envelope's sender and recipient, and the
    message itself (cut at ``MAX_TERMINAL_TEXT`` octets: ``truncated``)."""

    sender: str
    recipient: str
    queue_id: str
    received_at: float
    content: bytes
    truncated: bool = False

    def _parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    @property
    def subject(self) -> str:
        return str(self._parsed().get("Subject", "") or "")

    @property
    def date(self) -> str:
        """The message's Date, or its arrival here when it has none."""
        return str(self._parsed().get("Date", "") or "") or email.utils.formatdate(
            self.received_at, localtime=True
        )

    @property
    def text(self) -> str:
        """The plain text of the message (its first text/plain part), as a terminal shows it."""
        message = self._parsed()
        part = message.get_body(preferencelist=("plain",))
        if part is None:
            return ""
        try:
            content = part.get_content()
        except (LookupError, ValueError):  # an unknown charset, a broken encoding
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        return str(content).replace("\r\n", "\n")


@dataclass(frozen=True, slots=True)
class _Registration:
    path: Path
    address: str
    socket: str
    token: str


def _key(address: str) -> str:
    """The file name prefix of ``address``'s terminals (addresses compare without case)."""
    return hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()[:24]


class TerminalRegistry:
    """The terminals registered under one data directory. Reading it blocks only briefly
    (a directory listing and a local connect), so the SMTP session may ask at RCPT."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "terminals"

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is cut by the umask

    def _registrations(self, address: str) -> list[_Registration]:
        found = []
        for path in sorted(self.directory.glob(f"{_key(address)}-*.json")):
            try:
                raw: dict[str, Any] = json.loads(path.read_bytes())
                found.append(
                    _Registration(path, str(raw["address"]), str(raw["socket"]), str(raw["token"]))
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or removed meanwhile
        return [r for r in found if r.address == address.strip().lower()]

    def logged_on(self, address: str) -> bool:
        """Whether ``address`` has a live terminal now; stale registrations are removed."""
        registrations = self._registrations(address)
        if not registrations:
            return False
        listening = _listening_sockets()
        return any(self._alive(r, listening) for r in registrations)

    def _alive(self, registration: _Registration, listening: frozenset[str] | None) -> bool:
        if listening is not None:
            # Asked of the kernel, not of the terminal: a probe would be one more connection
            # for the terminal to accept and close.
            if registration.socket in listening:
                return True
            self._remove_stale(registration)
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            try:
                sock.connect(registration.socket)
            except (ConnectionRefusedError, FileNotFoundError):
                self._remove_stale(registration)
                return False
            except OSError:
                return False
        return True

    @staticmethod
    def _remove_stale(registration: _Registration) -> None:
        with contextlib.suppress(FileNotFoundError):
            registration.path.unlink()
        event("terminal_stale", user=registration.address)

    async def deliver(self, message: TerminalMessage, address: str) -> int:
        """Show ``message`` on every terminal of ``address``; returns how many showed it."""
        shown = 0
        for registration in await asyncio.to_thread(self._registrations, address):
            if await self._deliver_one(registration, message):
                shown += 1
        return shown

    async def _deliver_one(self, registration: _Registration, message: TerminalMessage) -> bool:
        try:
            # Connected in a thread, then handed to the loop: uvloop refuses abstract names.
            sock = await asyncio.to_thread(_connect, registration.socket)
            reader, writer = await asyncio.open_unix_connection(sock=sock)
        except (ConnectionRefusedError, FileNotFoundError):
            await asyncio.to_thread(self._remove_stale, registration)
            return False
        except (OSError, TimeoutError) as error:
            event_at(
                logging.WARNING, "terminal_error", user=registration.address, reason=str(error)
            )
            return False
        try:
            head = {
                "token": registration.token,
                "sender": message.sender,
                "recipient": message.recipient,
                "queue_id": message.queue_id,
                "received_at": message.received_at,
                "truncated": message.truncated,
                "size": len(message.content),
            }
            writer.write(json.dumps(head).encode("utf-8") + b"\n" + message.content)
            await asyncio.wait_for(writer.drain(), _TIMEOUT)
            answer = await asyncio.wait_for(reader.readline(), _TIMEOUT)
            return answer == _OK
        except (OSError, TimeoutError) as error:
            event_at(
                logging.WARNING, "terminal_error", user=registration.address, reason=str(error)
            )
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # -- the terminal's side -------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def open(self, address: str, on_message: OnMessage) -> AsyncIterator[Path]:
        """Register a terminal of ``address`` for the duration of the block; ``on_message`` is
        called (and awaited, if it returns an awaitable) for each message. Yields the
        registration file."""
        address = address.strip().lower()
        token = secrets.token_hex(16)
        name = f"\0pigeon-terminal-{secrets.token_hex(12)}"

        handlers: set[asyncio.Task[Any]] = set()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                handlers.add(task)
            try:
                message = await _receive(reader, token)
                if message is None:
                    return
                result = on_message(message)
                if inspect.isawaitable(result):
                    await result
                writer.write(_OK)
                await writer.drain()
            except (OSError, TimeoutError, ValueError):
                pass  # a probe, a stranger without the token, or a deliverer that gave up
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                if task is not None:
                    handlers.discard(task)

        server = await asyncio.start_unix_server(serve, path=name, limit=_HEADER_LIMIT)
        await asyncio.to_thread(self._ensure_directory)
        path = self.directory / f"{_key(address)}-{secrets.token_hex(8)}.json"
        record = {"address": address, "socket": name, "token": token, "pid": os.getpid()}
        # Written whole under a temporary name: a reader never sees half a registration.
        temporary = path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(json.dumps(record).encode("utf-8"))
        temporary.rename(path)
        event("terminal_open", user=address)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            server.close()
            # Connections still open (a liveness probe, a delivery under way) end with the
            # terminal: nothing is left to the garbage collector. One being accepted right
            # now takes a few turns of the loop to reach its handler: give it those first.
            for _ in range(5):
                await asyncio.sleep(0.01)
            for handler in list(handlers):
                handler.cancel()
            for handler in list(handlers):
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
            await server.wait_closed()
            event("terminal_closed", user=address)


def _listening_sockets() -> frozenset[str] | None:
    """The names of the abstract Unix sockets listening on this host (Linux's
    /proc/net/unix), or None where that cannot be read."""
    try:
        lines = Path("/proc/net/unix").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    names = set()
    for line in lines[1:]:
        fields = line.split(None, 7)
        # Num RefCount Protocol Flags Type St Inode Path; __SO_ACCEPTCON marks a listener.
        if len(fields) == 8 and fields[7].startswith("@") and int(fields[3], 16) & 0x10000:
            names.add("\0" + fields[7][1:])
    return frozenset(names)


def _connect(name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(_TIMEOUT)
        sock.connect(name)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _receive(reader: asyncio.StreamReader, token: str) -> TerminalMessage | None:
    line = await asyncio.wait_for(reader.readline(), _TIMEOUT)
    if not line.endswith(b"\n"):
        return None
    head: dict[str, Any] = json.loads(line)
    if not isinstance(head, dict) or not secrets.compare_digest(str(head.get("token", "")), token):
        return None
    size = int(head["size"])
    if not 0 <= size <= MAX_TERMINAL_TEXT:
        return None
    content = await asyncio.wait_for(reader.readexactly(size), _TIMEOUT)
    return TerminalMessage(
        sender=str(head["sender"]),
        recipient=str(head["recipient"]),
        queue_id=str(head["queue_id"]),
        received_at=float(head["received_at"]),
        content=content,
        truncated=bool(head.get("truncated", False)),
    )


def open_terminal(
    data_dir: Path, address: str, on_message: OnMessage
) -> contextlib.AbstractAsyncContextManager[Path]:
    """``TerminalRegistry(data_dir).open(address, on_message)``: the API for terminals."""
    return TerminalRegistry(data_dir).open(address, on_message)


class TerminalAgent:
    """The delivery agent for terminals, as the scheduler calls it (``TerminalAgent`` in
    ``pigeon.queue.scheduler``): show one message on one local user's terminals."""

    def __init__(self, registry: TerminalRegistry) -> None:
        self._registry = registry

    async def write(
        self, address: str, *, recipient: str, envelope: Envelope, queue_id: str, message: bytes
    ) -> bool:
        """True when at least one terminal of ``address`` showed the message."""
        truncated = len(message) > MAX_TERMINAL_TEXT
        note = TerminalMessage(
            sender=envelope.sender,
            recipient=recipient,
            queue_id=queue_id,
            received_at=envelope.received_at or time.time(),
            content=message[:MAX_TERMINAL_TEXT],
            truncated=truncated,
        )
        return await self._registry.deliver(note, address) > 0
