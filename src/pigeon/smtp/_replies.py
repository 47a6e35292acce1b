"""Replies: the three-digit code, the RFC 3463 enhanced status code, and the text.

A ``Reply`` knows how to put itself on the wire. Whether the enhanced code is shown depends
on the session (RFC 2034 section 3: only once ENHANCEDSTATUSCODES was offered in reply to
EHLO, and never in the greeting or the EHLO reply), so the connection decides that when it
formats, not the code that builds the reply.

The catalogue below names every reply the protocol core gives by itself and those that the
server commonly gives, so that the same condition always gets the same words.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

__all__ = ["Reply"]

# RFC 3463 section 2: status-code = class "." subject "." detail
#   class = "2" / "4" / "5";  subject = 1*3digit;  detail = 1*3digit
_STATUS_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line.

    ``lines`` are the texts after the code; a multi-line reply has several. ``status`` is the
    enhanced status code ("2.1.0"), or ``None`` for replies that never carry one.
    """

    code: int
    lines: tuple[str, ...]
    status: str | None = None

    # Written out, not generated, as the events' are (see pigeon.smtp._events): a reply is
    # made for every message.
    def __init__(self, code: int, lines: tuple[str, ...], status: str | None = None) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "status", status)
        # RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39
        if not 200 <= self.code <= 559 or self.code % 100 > 59:
            raise ValueError(f"not an SMTP reply code: {self.code}")
        if not self.lines:
            raise ValueError("a reply needs at least one line of text")
        for line in self.lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain line breaks")
        if self.status is not None and not _STATUS_RE.fullmatch(self.status):
            raise ValueError(f"not an enhanced status code (RFC 3463): {self.status!r}")
        if self.status is not None and self.status[0] != str(self.code)[0]:
            raise ValueError(f"enhanced status {self.status} does not match code {self.code}")

    @classmethod
    def of(cls, code: int, text: str, status: str | None = None) -> Reply:
        return cls(code, (text,), status)

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self, *, enhanced: bool = False) -> bytes:
        prefix = f"{self.status} " if enhanced and self.status else ""
        last = len(self.lines) - 1
        out = []
        for index, line in enumerate(self.lines):
            separator = " " if index == last else "-"
            out.append(f"{self.code}{separator}{prefix}{line}\r\n")
        # Reply texts are ours and ASCII, except addresses echoed under SMTPUTF8.
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        return self.to_bytes(enhanced=True).decode("utf-8").rstrip("\r\n")


# -- The catalogue ---------------------------------------------------------------------------
# 2xx
def service_ready(hostname: str, banner: str = "ESMTP Pigeon") -> Reply:
    return Reply.of(220, f"{hostname} {banner}")


# RFC 3207 section 4. Unlike the greeting, this 220 answers a command in an EHLO session, so
# it carries an enhanced code like any other reply.
READY_FOR_TLS = Reply.of(220, "Ready to start TLS", "2.0.0")


def closing(hostname: str) -> Reply:
    return Reply.of(221, f"{hostname} Service closing transmission channel", "2.0.0")


OK = Reply.of(250, "Ok", "2.0.0")
SENDER_OK = Reply.of(250, "Ok", "2.1.0")
RECIPIENT_OK = Reply.of(250, "Ok", "2.1.5")
RESET_OK = Reply.of(250, "Ok", "2.0.0")
NOOP_OK = Reply.of(250, "Ok", "2.0.0")


def queued(queue_id: str) -> Reply:
    return Reply.of(250, f"Ok: queued as {queue_id}", "2.0.0")


def will_forward(path: str) -> Reply:
    return Reply.of(251, f"User not local; will forward to <{path}>", "2.1.5")


CANNOT_VRFY = Reply.of(
    252, "Cannot VRFY user, but will accept message and attempt delivery", "2.5.0"
)
START_MAIL_INPUT = Reply.of(354, "End data with <CR><LF>.<CR><LF>")


# 4xx
def shutting_down(hostname: str) -> Reply:
    return Reply.of(421, f"{hostname} Service not available, closing transmission channel", "4.3.2")


def too_many_connections(hostname: str) -> Reply:
    return Reply.of(421, f"{hostname} Too many connections, try again later", "4.7.0")


def too_many_errors(hostname: str) -> Reply:
    return Reply.of(421, f"{hostname} Too many errors, closing transmission channel", "4.7.0")


def timeout(hostname: str) -> Reply:
    return Reply.of(421, f"{hostname} Timeout exceeded, closing transmission channel", "4.4.2")


TLS_NOT_AVAILABLE = Reply.of(454, "TLS not available due to temporary reason", "4.7.0")
MAILBOX_BUSY = Reply.of(450, "Mailbox busy, try again later", "4.2.1")
LOCAL_ERROR = Reply.of(451, "Local error in processing; message not accepted, try again", "4.3.0")
INSUFFICIENT_STORAGE = Reply.of(452, "Insufficient system storage, try again later", "4.3.1")
TOO_MANY_RECIPIENTS = Reply.of(452, "Too many recipients", "4.5.3")

# 5xx: syntax and sequence
COMMAND_UNRECOGNIZED = Reply.of(500, "Syntax error, command unrecognized", "5.5.2")
LINE_TOO_LONG = Reply.of(500, "Line too long", "5.5.2")
BARE_LF_IN_COMMAND = Reply.of(500, "Syntax error: command lines must end with <CR><LF>", "5.5.2")
INVALID_CHARACTERS = Reply.of(500, "Syntax error: invalid character in command", "5.5.2")
NOT_IMPLEMENTED = Reply.of(502, "Command not implemented", "5.5.1")
PARAMETER_NOT_IMPLEMENTED = Reply.of(504, "Command parameter not implemented", "5.5.4")
PARAMETERS_NOT_RECOGNIZED = Reply.of(555, "MAIL FROM/RCPT TO parameters not recognized", "5.5.4")


def syntax(text: str) -> Reply:
    """501: the command is known but its arguments are wrong; the text says how."""
    return Reply.of(501, text, "5.5.4")


def bad_sequence(text: str) -> Reply:
    return Reply.of(503, text, "5.5.1")


# 5xx: mailboxes and messages
def no_such_user(address: str) -> Reply:
    return Reply.of(550, f"<{address}>: Recipient address rejected: User unknown", "5.1.1")


def relay_denied(address: str) -> Reply:
    return Reply.of(550, f"<{address}>: Relay access denied", "5.7.1")


def user_not_local(path: str) -> Reply:
    return Reply.of(551, f"User not local; please try <{path}>", "5.1.6")


MESSAGE_TOO_BIG = Reply.of(552, "Message size exceeds fixed maximum message size", "5.3.4")
MAILBOX_FULL = Reply.of(552, "Mailbox full", "5.2.2")
BAD_SENDER_SYNTAX = Reply.of(553, "Bad sender address syntax", "5.1.7")
BAD_RECIPIENT_SYNTAX = Reply.of(553, "Bad recipient address syntax", "5.1.3")
NO_VALID_RECIPIENTS = Reply.of(554, "No valid recipients", "5.5.1")
LINE_TOO_LONG_IN_DATA = Reply.of(
    554, "Message refused: a line is longer than 1000 octets (RFC 5321 4.5.3.1.6)", "5.6.0"
)
BARE_LINE_END_IN_DATA = Reply.of(
    554,
    "Message refused: bare <CR> or <LF> in message text; lines must end with <CR><LF>"
    " (RFC 5321 2.3.8)",
    "5.6.0",
)
NUL_IN_DATA = Reply.of(554, "Message refused: NUL character in message text", "5.6.0")
TRANSACTION_FAILED = Reply.of(554, "Transaction failed", "5.0.0")


# ESMTP extensions: SMTPUTF8 (RFC 6531 section 3.7.4.1), BDAT (RFC 3030)
NEEDS_SMTPUTF8 = Reply.of(553, "Non-ASCII addresses require SMTPUTF8", "5.6.7")
BINARYMIME_NEEDS_BDAT = Reply.of(503, "BODY=BINARYMIME requires BDAT, not DATA", "5.5.1")


def chunk_received(size: int) -> Reply:
    return Reply.of(250, f"{size} octets received", "2.0.0")


# Limits and abuse controls
def too_many_connections_from(hostname: str, client: str) -> Reply:
    return Reply.of(421, f"{hostname} Too many connections from {client}", "4.7.0")


def too_many_messages(hostname: str) -> Reply:
    return Reply.of(
        421, f"{hostname} Too many messages in one session, closing transmission channel", "4.7.0"
    )


def too_many_commands(hostname: str) -> Reply:
    return Reply.of(421, f"{hostname} Too many commands, slow down; closing", "4.7.0")


def rate_limited(what: str) -> Reply:
    """450 at MAIL: more mail than the rate limit allows, from ``what`` (an address, a user)."""
    return Reply.of(450, f"Too much mail from {what}; try again later", "4.7.1")


def early_talker(hostname: str) -> Reply:
    """RFC 5321 section 3.1 lets a server answer 554 instead of 220; this one says why."""
    return Reply.of(554, f"{hostname} Protocol error: talking before the greeting", "5.5.0")


# AUTH (RFC 4954 section 6; enhanced codes from RFC 5248)
def challenge(data: bytes) -> Reply:
    """334 and a SASL challenge in base64 (no enhanced code: its text is data)."""
    return Reply.of(334, base64.b64encode(data).decode("ascii"))


AUTH_SUCCEEDED = Reply.of(235, "Authentication successful", "2.7.0")
AUTH_TEMPORARY_FAILURE = Reply.of(454, "Temporary authentication failure", "4.7.0")
AUTH_CANCELLED = Reply.of(501, "Authentication cancelled", "5.0.0")
AUTH_BAD_BASE64 = Reply.of(501, "Cannot Base64-decode client response", "5.5.2")
ALREADY_AUTHENTICATED = Reply.of(503, "Already authenticated", "5.5.1")
AUTH_UNKNOWN_MECHANISM = Reply.of(504, "Unrecognized authentication type", "5.5.4")
AUTH_REQUIRED = Reply.of(530, "Authentication required", "5.7.0")
STARTTLS_FIRST = Reply.of(530, "Must issue a STARTTLS command first", "5.7.0")
AUTH_INVALID = Reply.of(535, "Authentication credentials invalid", "5.7.8")
ENCRYPTION_REQUIRED = Reply.of(
    538, "Encryption required for requested authentication mechanism", "5.7.11"
)


def auth_failed(reason: str) -> Reply:
    """535 for a client that broke a mechanism's rules: the reason is about the protocol,
    never about whether the user exists."""
    return Reply.of(535, f"Authentication failed: {reason}", "5.7.8")


def sender_not_owned(address: str, user: str) -> Reply:
    return Reply.of(553, f"<{address}>: Sender address rejected: not owned by user {user}", "5.7.1")
