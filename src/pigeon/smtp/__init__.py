"""The SMTP protocol with no I/O: grammar, replies, and the server and client state machines.

Nothing here touches sockets, files, clocks or asyncio, so the same core serves the server,
the client and LMTP, and is tested byte for byte without a network.
"""

from ._client import ClientConnection, Extensions, dot_stuff
from ._events import (
    Address,
    Auth,
    AuthAborted,
    AuthResponse,
    ConnectionClosed,
    DataCommand,
    Etrn,
    Event,
    Expand,
    Hello,
    HelpStatus,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageEnd,
    RcptTo,
    Reset,
    StartTLS,
    Turn,
    Verify,
)
from ._grammar import CommandError, parse_mailbox, valid_domain
from ._idna import domain_key, to_ascii_domain, to_unicode_domain
from ._replies import Reply
from ._reply_parser import ReplyError, ReplyParser
from ._server import NEED_DATA, PAUSED, ServerConnection, ServerSettings
from ._state import State
from ._xtext import xtext_decode, xtext_encode

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Address",
    "Auth",
    "AuthAborted",
    "AuthResponse",
    "ClientConnection",
    "CommandError",
    "ConnectionClosed",
    "DataCommand",
    "Etrn",
    "Event",
    "Expand",
    "Extensions",
    "Hello",
    "HelpStatus",
    "MailFrom",
    "MessageAborted",
    "MessageData",
    "MessageEnd",
    "RcptTo",
    "Reply",
    "ReplyError",
    "ReplyParser",
    "Reset",
    "ServerConnection",
    "ServerSettings",
    "StartTLS",
    "State",
    "Turn",
    "Verify",
    "domain_key",
    "dot_stuff",
    "parse_mailbox",
    "replies",
    "to_ascii_domain",
    "to_unicode_domain",
    "valid_domain",
    "xtext_decode",
    "xtext_encode",
]

from . import _replies as replies
