"""Events: what the protocol core tells the program driving it.

Each is a small frozen value. Those whose ``needs_reply`` is true wait for the program's
decision (``ServerConnection.accept()`` or ``respond()``) before the core reads the next
command; the rest are information, already answered by the core where an answer was due.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, Literal

from ._abnf import DOT_STRING_UTF8
from ._replies import Reply

__all__ = [
    "Address",
    "Auth",
    "AuthAborted",
    "AuthResponse",
    "ConnectionClosed",
    "DataCommand",
    "Etrn",
    "Event",
    "Expand",
    "Hello",
    "HelpStatus",
    "MailFrom",
    "MessageAborted",
    "MessageData",
    "MessageEnd",
    "RcptTo",
    "Reset",
    "StartTLS",
    "Turn",
    "Verify",
]

# UTF-8 local parts (RFC 6531) are written as they are; only what needs quotes gets them.
_DOT_STRING_RE = re.compile(DOT_STRING_UTF8)

# The events made for every message write their __init__ out: the compiled build (mypyc)
# compiles a class's own __init__, but not the one dataclasses generates when the module is
# imported, which sets each field through object.__setattr__ at interpreter speed (for an
# Envelope, 3 us against 0.14 us compiled). The signatures are the generated ones'.


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox, ``local_part@domain``.

    ``local_part`` is decoded: the quotes and backslashes of a Quoted-string are gone, so a
    check for "@" or "%" in it sees what the sender really asked for. ``domain`` is as sent,
    which may be an address literal in brackets; it is empty only for the special RCPT path
    ``<postmaster>`` (RFC 5321 section 4.1.1.3).
    """

    local_part: str
    domain: str

    def __init__(self, local_part: str, domain: str) -> None:
        object.__setattr__(self, "local_part", local_part)
        object.__setattr__(self, "domain", domain)

    @property
    def is_postmaster(self) -> bool:
        return self.local_part.lower() == "postmaster"

    def __str__(self) -> str:
        local = self.local_part
        if not _DOT_STRING_RE.fullmatch(local):
            # RFC 5321 section 4.1.2: quote it again the way it must be written.
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{local}@{self.domain}" if self.domain else local


class Event:
    @property
    def needs_reply(self) -> bool:
        """Whether the core waits for the program's decision before it reads on."""
        return type(self) in _AWAITING_A_DECISION


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO or EHLO. ``name`` is the client's claim; empty only for a bare HELO in classic mode."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """MAIL, or one of the classic SEND, SOML, SAML (RFC 821 section 3.5) that start a
    transaction the same way. ``sender`` is ``None`` for the null reverse-path ``<>``."""

    sender: Address | None
    parameters: dict[str, str | None] = field(default_factory=dict)
    verb: Literal["MAIL", "SEND", "SOML", "SAML"] = "MAIL"
    raw: str = ""  # the path as the client wrote it, for replies that echo it

    def __init__(
        self,
        sender: Address | None,
        parameters: dict[str, str | None] | None = None,
        verb: Literal["MAIL", "SEND", "SOML", "SAML"] = "MAIL",
        raw: str = "",
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "parameters", {} if parameters is None else parameters)
        object.__setattr__(self, "verb", verb)
        object.__setattr__(self, "raw", raw)


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    recipient: Address
    parameters: dict[str, str | None] = field(default_factory=dict)
    raw: str = ""
    route: tuple[str, ...] = ()  # a source route the client gave; RFC 5321 says ignore it

    def __init__(
        self,
        recipient: Address,
        parameters: dict[str, str | None] | None = None,
        raw: str = "",
        route: tuple[str, ...] = (),
    ) -> None:
        object.__setattr__(self, "recipient", recipient)
        object.__setattr__(self, "parameters", {} if parameters is None else parameters)
        object.__setattr__(self, "raw", raw)
        object.__setattr__(self, "route", route)


@dataclass(frozen=True, slots=True)
class DataCommand(Event):
    """DATA with at least one accepted recipient: answer 354 (``accept()``) or refuse.

    ``chunked``: the first BDAT of a transaction (RFC 3030) instead. ``accept()`` then says
    nothing: the core reads the chunk, hands it out as ``MessageData`` and answers each chunk
    itself, until the LAST one ends the message with ``MessageEnd``. A refusal is the reply
    to that BDAT; its chunk is read and thrown away."""

    chunked: bool = False

    def __init__(self, chunked: bool = False) -> None:
        object.__setattr__(self, "chunked", chunked)


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A piece of the message text, in order: dot-unstuffed with CRLF line ends after DATA,
    the octets exactly as sent after BDAT."""

    data: bytes

    def __init__(self, data: bytes) -> None:
        object.__setattr__(self, "data", data)


@dataclass(frozen=True, slots=True)
class MessageEnd(Event):
    """The message is complete; answer 250 only once it is stored, or refuse it."""

    size: int

    def __init__(self, size: int) -> None:
        object.__setattr__(self, "size", size)


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The message ended but was refused by the core (size, line length, bare line ends), or
    a BDAT transaction was given up. The reply has been sent; drop what was stored of it."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The transaction was dropped (RSET, HELO, EHLO); forget its sender and recipients."""


@dataclass(frozen=True, slots=True)
class Verify(Event):
    argument: str


@dataclass(frozen=True, slots=True)
class Expand(Event):
    argument: str


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS (RFC 3207), offered and in sequence: ``accept()`` says 220 and the core reads
    nothing more until ``tls_started()``; or refuse it with 454 4.7.0 and the session goes on
    in the clear."""


@dataclass(frozen=True, slots=True)
class Auth(Event):
    """AUTH (RFC 4954), offered, in sequence, naming a mechanism the settings list.

    ``initial`` is the initial response, base64-decoded ("=" is the empty one), or None when
    the client sent none. Answer with ``challenge()`` (334; the client's next line comes back
    as ``AuthResponse``), ``respond()`` with 235 (authenticated), or refuse (535, 454...)."""

    mechanism: str  # upper case
    initial: bytes | None = None


@dataclass(frozen=True, slots=True)
class AuthResponse(Event):
    """The client's answer to a 334 challenge, base64-decoded. Answered like ``Auth``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AuthAborted(Event):
    """The exchange ended without the program's say: the client cancelled it with "*"
    (501 5.0.0) or sent malformed base64 (501 5.5.2). The reply has been sent."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class HelpStatus(Event):
    """``HELP STATUS``: the program answers 211 (system status) to whom it trusts, and 502
    to the rest."""


@dataclass(frozen=True, slots=True)
class Turn(Event):
    """TURN (RFC 821), or ATRN (RFC 2645) with the domains it names (none: all the client's).
    A positive reply reverses the roles: the core then reads nothing more."""

    verb: Literal["TURN", "ATRN"] = "TURN"
    domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Etrn(Event):
    """``ETRN [@|#]node`` (RFC 1985): start delivering what is queued for ``node``. ``option``
    is "" (that domain), "@" (it and its subdomains) or "#" (a queue named ``node``)."""

    node: str
    option: Literal["", "@", "#"] = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The core has said its last word (221 or 421); flush the output and close."""


# The events ``needs_reply`` is true for. A set rather than a class attribute each, because
# the compiled build (mypyc) turns a class attribute of a dataclass into a field.
_AWAITING_A_DECISION: Final = frozenset(
    {
        Hello,
        MailFrom,
        RcptTo,
        DataCommand,
        MessageEnd,
        Verify,
        Expand,
        StartTLS,
        Auth,
        AuthResponse,
        HelpStatus,
        Turn,
        Etrn,
    }
)
