"""``ClientConnection``: the client side of SMTP as a state machine, with no I/O.

It is the mirror of ``ServerConnection``: methods turn commands into bytes to send, and
``receive_data`` plus ``next_reply`` turn the server's bytes into replies, each matched to
the command it answers. Commands may be sent several at once (PIPELINING, RFC 2920); replies
come back in order, and the connection remembers which command each belongs to::

    conn = ClientConnection()
    # after connecting:
    reply = ...  # read until conn.next_reply() gives the greeting
    sock.send(conn.ehlo("client.example"))
    ...

The connection does no sequencing policy of its own (that is ``pigeon.client``'s job); it
checks what must hold for the bytes to be right: addresses are valid, the message is
dot-stuffed, BDAT chunk sizes are exact, and nothing is sent after QUIT.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ._replies import Reply
from ._reply_parser import ReplyParser

__all__ = ["ClientConnection", "Extensions", "dot_stuff"]


@dataclass(slots=True)
class Extensions:
    """What the server's EHLO reply offered: keyword (upper case) -> parameters."""

    keywords: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: Reply) -> Extensions:
        keywords: dict[str, tuple[str, ...]] = {}
        for line in reply.lines[1:]:  # the first line is the server's name and greeting
            words = line.split()
            if words:
                keywords[words[0].upper()] = tuple(words[1:])
        return cls(keywords)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    def get(self, keyword: str) -> tuple[str, ...] | None:
        return self.keywords.get(keyword.upper())

    @property
    def size_limit(self) -> int | None:
        """The SIZE the server declared (RFC 1870); None when absent or 0 (no limit)."""
        params = self.get("SIZE")
        if params and params[0].isdigit() and int(params[0]) > 0:
            return int(params[0])
        return None

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        return tuple(m.upper() for m in self.get("AUTH") or ())


def dot_stuff(message: bytes) -> bytes:
    """The message as DATA sends it: CRLF line ends, leading dots doubled, ending CRLF.CRLF.

    Bare LF and bare CR are turned into CRLF first: sending them would be refused by careful
    servers and misread by careless ones (the SMTP smuggling ambiguity)."""
    if b"\r" in message or b"\n" in message:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class ClientConnection:
    """One SMTP session, client side."""

    def __init__(self) -> None:
        self._parser = ReplyParser()
        # What each reply still to come answers, oldest first; the greeting comes first.
        self._expected: deque[str] = deque(["GREETING"])
        self.extensions = Extensions()
        self.closed = False
        self._quit_sent = False

    # -- replies ------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self._parser.receive_data(data)

    def next_reply(self) -> tuple[str, Reply] | None:
        """``(command, reply)`` for the oldest unanswered command, or None: read more.

        Raises ``ReplyError`` when the server sends something that is not a reply, and
        ``RuntimeError`` when it answers a command that was never sent."""
        reply = self._parser.next_reply()
        if reply is None:
            return None
        if not self._expected:
            raise RuntimeError(f"unexpected reply with no command outstanding: {reply}")
        command = self._expected.popleft()
        if command == "EHLO" and reply.code == 250:
            self.extensions = Extensions.from_reply(reply)
        if command == "QUIT" or reply.code == 421:
            self.closed = True
        return command, reply

    @property
    def outstanding(self) -> int:
        """Commands sent whose replies have not come yet."""
        return len(self._expected)

    # -- commands -----------------------------------------------------------------------------
    def ehlo(self, name: str) -> bytes:
        self.extensions = Extensions()
        return self._command("EHLO", f"EHLO {_token(name)}")

    def helo(self, name: str) -> bytes:
        self.extensions = Extensions()
        return self._command("HELO", f"HELO {_token(name)}")

    def mail(self, sender: str, parameters: Mapping[str, str | None] | None = None) -> bytes:
        return self._command("MAIL", f"MAIL FROM:<{_path(sender)}>{_parameters(parameters)}")

    def rcpt(self, recipient: str, parameters: Mapping[str, str | None] | None = None) -> bytes:
        if not recipient:
            raise ValueError("a recipient cannot be the null path")
        return self._command("RCPT", f"RCPT TO:<{_path(recipient)}>{_parameters(parameters)}")

    def data(self) -> bytes:
        return self._command("DATA", "DATA")

    def message(self, content: bytes) -> bytes:
        """The message text after 354, dot-stuffed and terminated."""
        return self._raw("MESSAGE", dot_stuff(content))

    def bdat(self, chunk: bytes, *, last: bool) -> bytes:
        """One BDAT chunk (RFC 3030): sent as is, no dot-stuffing; its size is exact."""
        head = f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode("ascii")
        return self._raw("BDAT", head + chunk)

    def rset(self) -> bytes:
        return self._command("RSET", "RSET")

    def noop(self) -> bytes:
        return self._command("NOOP", "NOOP")

    def quit(self) -> bytes:
        return self._command("QUIT", "QUIT")

    def starttls(self) -> bytes:
        return self._command("STARTTLS", "STARTTLS")

    def tls_started(self) -> None:
        """After the handshake: forget the old EHLO (RFC 3207 section 4.2) and any bytes the
        server sent before it, which an attacker in the middle could have injected."""
        self._parser = ReplyParser()
        self.extensions = Extensions()

    def auth(self, mechanism: str, initial: str | None = None) -> bytes:
        line = f"AUTH {mechanism}" + (f" {initial}" if initial is not None else "")
        return self._command("AUTH", line, secret=True)

    def auth_continue(self, response: str) -> bytes:
        """A response to a 334 challenge (base64, or "*" to cancel)."""
        return self._command("AUTH", response, secret=True)

    def verb(self, line: str) -> bytes:
        """Any other command, for tools that speak raw SMTP (VRFY, EXPN, HELP, ETRN...)."""
        verb = line.split(" ", 1)[0].upper()
        return self._command(verb, line)

    # -- helpers ------------------------------------------------------------------------------
    def _command(self, name: str, line: str, *, secret: bool = False) -> bytes:
        if "\r" in line or "\n" in line:
            raise ValueError("a command cannot contain a line break")
        return self._raw(name, line.encode("utf-8") + b"\r\n")

    def _raw(self, name: str, data: bytes) -> bytes:
        if self.closed or self._quit_sent:
            raise RuntimeError("the session is closed")
        self._quit_sent = name == "QUIT"
        self._expected.append(name)
        return data


def _token(name: str) -> str:
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"not a domain name for HELO/EHLO: {name!r}")
    return name


def _path(address: str) -> str:
    if any(c in address for c in "<>\r\n ") and not address.startswith('"'):
        raise ValueError(f"not an address: {address!r}")
    return address


def _parameters(parameters: Mapping[str, str | None] | Iterable[str] | None) -> str:
    if not parameters:
        return ""
    if isinstance(parameters, Mapping):
        items = [k if v is None else f"{k}={v}" for k, v in parameters.items()]
    else:
        items = list(parameters)
    return "".join(f" {item}" for item in items)
