"""Drive a ``pigeon.smtp.ServerConnection`` with no sockets: feed bytes, answer events.

The tests of ``pigeon.smtp`` share these helpers. A ``Driver`` owns one connection; every
``feed`` hands the bytes to the core, answers each event that needs a reply with the given
policy, and returns what the core wrote. The default policy accepts everything, as a server
with no restrictions would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TypeAlias

from pigeon.smtp import (
    NEED_DATA,
    PAUSED,
    ConnectionClosed,
    Event,
    Expand,
    MessageData,
    MessageEnd,
    Reply,
    ServerConnection,
    ServerSettings,
    State,
    Turn,
    Verify,
)

CLIENT_IP = "192.0.2.7"
HOST = "mx.example.test"
QUEUE_ID = "4ZQ7AB12"

# A reply for the event, or None to give the usual positive reply (``accept()``).
Decision: TypeAlias = Reply | None
Policy: TypeAlias = Callable[[Event], Decision] | Mapping[type[Event], Reply]

# Answers for the events that have no standard positive reply.
VRFY_REPLY = Reply.of(252, "Cannot VRFY user, but will accept message", "2.5.0")
EXPN_REPLY = Reply.of(250, "list@example.test", "2.1.5")
TURN_REPLY = Reply.of(502, "TURN not offered", "5.5.1")

# RFC 5321 section 4.2: Reply-code [ SP / "-" ] textstring CRLF, code %x32-35 %x30-35 %x30-39.
REPLY_LINE_RE = re.compile(rb"[2-5][0-5][0-9][ -][^\r\n]*\r\n")


def settings(**overrides: object) -> ServerSettings:
    """The settings the tests use: a fixed hostname, anything else as given."""
    options: dict[str, object] = {"hostname": HOST, **overrides}
    return ServerSettings(**options)  # type: ignore[arg-type]


def accept_all(event: Event) -> Decision:
    return None


class Driver:
    """One connection and the program that answers it."""

    def __init__(
        self,
        server_settings: ServerSettings | None = None,
        *,
        policy: Policy = accept_all,
        client_address: str = CLIENT_IP,
        start: bool = True,
        queue_id: str = QUEUE_ID,
        handshake: bool = True,
        tls: bool = False,
    ) -> None:
        self.conn = ServerConnection(
            server_settings or settings(), client_address=client_address, tls=tls
        )
        self.policy = policy
        # After 220 to STARTTLS: finish the "handshake" at once (the rest of the bytes fed
        # with STARTTLS are then discarded, as a server must), or leave the core waiting.
        self.handshake = handshake
        self.queue_id = queue_id
        self.events: list[Event] = []
        self.closed = False
        if start:
            self.conn.start()

    def decide(self, event: Event) -> Decision:
        if callable(self.policy):
            return self.policy(event)
        return self.policy.get(type(event))

    def answer(self, event: Event) -> None:
        """Reply to an event that needs one, following the policy."""
        reply = self.decide(event)
        if reply is not None:
            self.conn.respond(reply)
        elif isinstance(event, MessageEnd):
            self.conn.accept_message(self.queue_id)
        elif isinstance(event, Verify):
            self.conn.respond(VRFY_REPLY)
        elif isinstance(event, Expand):
            self.conn.respond(EXPN_REPLY)
        elif isinstance(event, Turn):
            self.conn.respond(TURN_REPLY)
        else:
            self.conn.accept()

    def pump(self) -> None:
        """Take events until the core needs more bytes, answering as they come."""
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            if event is PAUSED:
                if self.conn.state is State.TLS:
                    if not self.handshake:
                        return
                    self.conn.tls_started()
                    continue
                raise AssertionError("PAUSED with the driver holding no pending event")
            assert isinstance(event, Event)
            if isinstance(event, ConnectionClosed):
                # The core repeats ConnectionClosed forever; record it once.
                if not self.closed:
                    self.events.append(event)
                self.closed = True
                return
            self.events.append(event)
            if event.needs_reply:
                self.answer(event)

    def feed(self, data: bytes) -> bytes:
        self.conn.receive_data(data)
        self.pump()
        return self.conn.data_to_send()

    def feed_chunks(self, chunks: Iterable[bytes]) -> bytes:
        return b"".join(self.feed(chunk) for chunk in chunks)

    def greeting(self) -> bytes:
        self.pump()
        return self.conn.data_to_send()

    def message_text(self) -> bytes:
        """All MessageData received so far, joined."""
        return b"".join(e.data for e in self.events if isinstance(e, MessageData))


def converse(
    data: bytes | Iterable[bytes],
    server_settings: ServerSettings | None = None,
    *,
    policy: Policy = accept_all,
) -> tuple[list[Event], bytes]:
    """A whole session: greet, feed ``data`` (one chunk or several), return (events, output).

    The output includes the 220 greeting.
    """
    driver = Driver(server_settings, policy=policy)
    out = driver.greeting()
    chunks = [data] if isinstance(data, bytes) else list(data)
    out += driver.feed_chunks(chunks)
    return driver.events, out


def reply_lines(out: bytes) -> list[str]:
    """The output as lines of text without CRLF, checking each is a well-formed reply line."""
    assert out.endswith(b"\r\n") or not out, out
    lines = out.split(b"\r\n")[:-1] if out else []
    for line in lines:
        assert REPLY_LINE_RE.fullmatch(line + b"\r\n"), line
    return [line.decode("utf-8") for line in lines]


def replies_of(out: bytes) -> list[list[str]]:
    """The output split into replies, each a list of its lines (multi-line replies grouped)."""
    result: list[list[str]] = []
    current: list[str] = []
    for line in reply_lines(out):
        current.append(line)
        if line[3] == " ":
            result.append(current)
            current = []
    assert not current, f"unterminated multi-line reply: {current}"
    return result


def first_lines(out: bytes) -> list[str]:
    """The last line of each reply (the one with the final code): one entry per reply."""
    return [reply[-1] for reply in replies_of(out)]


def codes(out: bytes) -> list[int]:
    return [int(reply[0][:3]) for reply in replies_of(out)]


def kinds(events: Iterable[Event]) -> list[str]:
    return [type(event).__name__ for event in events]


def ehlo_session(driver: Driver | None = None, name: str = "client.example.test") -> Driver:
    """A driver past the greeting and an accepted EHLO, output drained."""
    driver = driver or Driver()
    driver.greeting()
    driver.feed(f"EHLO {name}\r\n".encode())
    driver.events.clear()
    return driver


def helo_session(driver: Driver | None = None, name: str = "client.example.test") -> Driver:
    driver = driver or Driver()
    driver.greeting()
    driver.feed(f"HELO {name}\r\n".encode())
    driver.events.clear()
    return driver


def transaction_session(driver: Driver | None = None) -> Driver:
    """EHLO, MAIL and one RCPT accepted; output and events drained."""
    driver = ehlo_session(driver)
    driver.feed(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
    driver.events.clear()
    return driver


__all__ = [
    "CLIENT_IP",
    "EXPN_REPLY",
    "HOST",
    "QUEUE_ID",
    "TURN_REPLY",
    "VRFY_REPLY",
    "Driver",
    "accept_all",
    "codes",
    "converse",
    "ehlo_session",
    "first_lines",
    "helo_session",
    "kinds",
    "replies_of",
    "reply_lines",
    "settings",
    "transaction_session",
]
