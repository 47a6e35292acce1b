"""``ServerConnection``: the server side of SMTP as a state machine, with no I/O.

The program driving it (``pigeon.server``) feeds it bytes and asks for events::

    conn = ServerConnection(settings, client_address="192.0.2.1")
    conn.start()                        # queue the 220 greeting
    conn.receive_data(data)
    while True:
        event = conn.next_event()
        if event is NEED_DATA or event is PAUSED:
            break
        ...                             # decide, then conn.accept() / conn.respond(reply)
    transport.write(conn.data_to_send())

Commands the core can answer alone (syntax errors, sequence errors, NOOP, RSET, HELP, QUIT)
are answered here and never reach the program. A command that needs a decision (HELO, MAIL,
RCPT, DATA, VRFY, ...) comes out as an event with ``needs_reply``; until the program replies,
``next_event()`` returns ``PAUSED`` and pipelined commands wait in the buffer, so replies
always leave in the order of the commands (RFC 2920).

STARTTLS (RFC 3207), when the settings offer it, comes out as a ``StartTLS`` event. After
``accept()`` (220) the core reads nothing: ``next_event()`` returns ``PAUSED`` and every byte
the client sent after the command line is thrown away, never parsed, because a man in the
middle can append plaintext commands there that would otherwise run as if they had come
through TLS (CVE-2011-0411). Once the handshake is done the program calls ``tls_started()``
and the session begins again at START, with nothing remembered of what came before::

    event = conn.next_event()           # StartTLS
    conn.accept()                       # 220 2.0.0 Ready to start TLS
    transport.write(conn.data_to_send())
    ...                                 # the TLS handshake, with reading paused
    conn.tls_started()                  # EHLO again; STARTTLS now gets 503
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import _replies as replies
from ._chunks import ChunkedMessage, ChunkReader
from ._data import DataReader
from ._dsn import check_mail_dsn, check_rcpt_parameters
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
from ._grammar import (
    MAX_PATH,
    CommandError,
    _printable,
    parse_parameters,
    parse_path,
    valid_domain,
)
from ._help import COMMAND_HELP, OPTIONAL_COMMANDS, command_list
from ._replies import Reply
from ._state import State, in_sequence, sequence_error

__all__ = ["NEED_DATA", "PAUSED", "ServerConnection", "ServerSettings"]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""No complete command (or piece of message) is buffered; feed more bytes."""
PAUSED: Final = _Sentinel("PAUSED")
"""An event is waiting for the program's reply; nothing more is read until it comes."""

# Commands that exist in other SMTP servers' vocabularies but that this server does not
# offer: they get 502 "not implemented" rather than 500 "unrecognized". STARTTLS is among
# them when the settings do not offer it.
_NOT_OFFERED = frozenset({"STARTTLS", "AUTH", "BDAT", "ETRN", "ATRN", "VERB", "ONEX", "XCLIENT"})

# RFC 4954 section 4: a SASL response line may be far longer than a command (12288 octets is
# what a server SHOULD take at least).
_SASL_LINE = 12288


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the protocol core needs to know about the server. Limits default to RFC 5321
    section 4.5.3.1 and to Postfix's defaults."""

    hostname: str = "localhost"
    banner: str = "ESMTP Pigeon"
    # RFC 821 compatibility: bare HELO, paths without <>, comments in paths, and the
    # sendmail-style reply texts of the classic sample conversation.
    classic: bool = False
    max_message_size: int = 25 * 1024 * 1024  # 0: no limit
    max_recipients: int = 1000
    max_errors: int = 10
    max_command_line: int = 512  # octets including CRLF (4.5.3.1.4)
    max_text_line: int = 1000  # octets including CRLF (4.5.3.1.6)
    reject_bare_line_ends: bool = True
    pipelining: bool = True
    eightbitmime: bool = True
    enhanced_status_codes: bool = True
    # STARTTLS (RFC 3207) is offered: listed in EHLO until TLS is active, and answered.
    starttls: bool = False
    # Off unless asked for, so that the bare core is a plain RFC 5321 server.
    smtputf8: bool = False  # RFC 6531: UTF-8 addresses with MAIL ... SMTPUTF8
    chunking: bool = False  # RFC 3030: BDAT
    binarymime: bool = False  # RFC 3030: BODY=BINARYMIME (with chunking only)
    requiretls: bool = False  # RFC 8689: MAIL ... REQUIRETLS, offered under TLS only
    dsn: bool = False  # RFC 3461: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT
    # AUTH (RFC 4954): the SASL mechanisms offered, in the order EHLO lists them; none: 502.
    auth_mechanisms: tuple[str, ...] = ()
    # AUTH is offered before TLS is active too; else only under TLS (538 before it).
    auth_plaintext: bool = False
    # MAIL needs AUTH first (530 5.7.0), as on a submission port (RFC 6409 section 4.3).
    auth_required: bool = False
    etrn: bool = False  # RFC 1985: ETRN, listed in EHLO
    atrn: bool = False  # RFC 2645: ATRN, listed in EHLO where AUTH is


class ServerConnection:
    """One SMTP session, server side."""

    __slots__ = (
        "_after_chunk",
        "_body",
        "_chunk",
        "_chunk_aborts",
        "_chunk_refusal",
        "_chunked",
        "_close_after_output",
        "_discarding_chunk",
        "_discarding_long_line",
        "_in",
        "_out",
        "_pending",
        "_reader",
        "_recipients",
        "_recipients_refused",
        "_utf8",
        "authenticated",
        "client_address",
        "command_budget",
        "errors",
        "extended",
        "helo_name",
        "messages",
        "settings",
        "state",
        "tls_active",
    )

    def __init__(
        self, settings: ServerSettings, *, client_address: str = "", tls: bool = False
    ) -> None:
        """``tls``: the connection is encrypted from its first byte (implicit TLS, RFC 8314)."""
        self.settings = settings
        self.client_address = client_address
        self.tls_active = tls
        self.state = State.GREETING
        self.helo_name = ""
        self.extended = False  # EHLO was accepted: ESMTP parameters and enhanced codes
        self.authenticated = False  # AUTH succeeded (235); forgotten after STARTTLS
        self.errors = 0
        self.messages = 0
        self._in = bytearray()
        self._out: list[bytes] = []
        self._pending: Event | None = None
        self._discarding_long_line = False
        self._reader: DataReader | None = None
        # BDAT: the chunk being read; the message its chunks make up; for a chunk that is
        # only read to be thrown away, the reply to give once it is, and the state after it.
        self._chunk: ChunkReader | None = None
        self._chunked: ChunkedMessage | None = None
        self._chunk_refusal: Reply | None = None
        self._discarding_chunk = False
        self._chunk_aborts = False
        self._after_chunk = State.READY
        self._close_after_output = False
        # Command lines the client may still send, or None for no limit: the program sets
        # it from a rate (which needs a clock) and the core enforces it line by line, so a
        # pipelined burst is cut off where it crosses the limit.
        self.command_budget: int | None = None
        self._reset_transaction()

    # -- feeding and draining -----------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        # In TLS, bytes are what the client sent after STARTTLS and before the handshake:
        # never commands (the STARTTLS injection of CVE-2011-0411).
        if self.state not in (State.CLOSED, State.TLS, State.TURNED):
            self._in += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed: the driver stops reading when this grows."""
        return len(self._in)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def awaiting_reply(self) -> Event | None:
        return self._pending

    @property
    def is_idle(self) -> bool:
        """Between commands, with nothing half-done: safe to close with 421."""
        busy = (State.DATA, State.CHUNK, State.BDAT, State.TLS, State.TURNED, State.CLOSED)
        return self._pending is None and self.state not in busy

    @property
    def in_message(self) -> bool:
        """Reading message text (DATA, or a BDAT chunk): the data timeout applies."""
        return self.state in (State.DATA, State.CHUNK)

    # -- the program's side -------------------------------------------------------------------
    def start(self, refusal: Reply | None = None) -> None:
        """Send the greeting, or ``refusal`` (421) to turn the client away."""
        if self.state is not State.GREETING:
            raise RuntimeError("the greeting was sent already")
        if refusal is not None:
            self._close(refusal)
            return
        self.state = State.START
        self._emit(replies.service_ready(self.settings.hostname, self.settings.banner))

    def accept(self) -> None:
        """Give the usual positive reply to the pending event."""
        event = self._pending
        if event is None:
            raise RuntimeError("no command is waiting for a reply")
        classic = self.settings.classic
        if isinstance(event, Hello):
            self.respond(self._hello_reply(event))
        elif isinstance(event, MailFrom):
            self.respond(
                Reply.of(250, f"{_printable(event.raw, MAX_PATH)}... Sender ok")
                if classic
                else replies.SENDER_OK
            )
        elif isinstance(event, RcptTo):
            self.respond(
                Reply.of(250, f"{_printable(event.raw, MAX_PATH)}... Recipient ok")
                if classic
                else replies.RECIPIENT_OK
            )
        elif isinstance(event, DataCommand) and event.chunked:
            self._pending = None  # no reply: the chunk follows, and is answered when read
            limit = self.settings.max_message_size
            self._chunked = ChunkedMessage(
                max_size=limit or None,
                max_line=self.settings.max_text_line,
                reject_bare_line_ends=self.settings.reject_bare_line_ends,
                binary=self._body == "BINARYMIME",
            )
            self.state = State.CHUNK
        elif isinstance(event, DataCommand):
            self.respond(
                Reply.of(354, 'Enter mail, end with "." on a line by itself')
                if classic
                else replies.START_MAIL_INPUT
            )
        elif isinstance(event, StartTLS):
            self.respond(replies.READY_FOR_TLS)
        else:
            raise RuntimeError(f"{type(event).__name__} has no standard positive reply")

    def accept_message(self, queue_id: str) -> None:
        """The message is safely stored: say so, naming its queue id."""
        if self.settings.classic:
            self.respond(Reply.of(250, f"{queue_id} Message accepted for delivery"))
        else:
            self.respond(replies.queued(queue_id))

    def respond(self, reply: Reply) -> None:
        """Answer the pending event with ``reply``; its code decides the next state."""
        event = self._pending
        if event is None:
            raise RuntimeError("no command is waiting for a reply")
        self._pending = None
        positive = reply.is_positive
        if isinstance(event, Hello):
            if positive:
                self._reset_transaction()
                self.helo_name = event.name
                self.extended = event.extended
                self.state = State.READY
        elif isinstance(event, MailFrom):
            if positive:
                self.state = State.MAIL
                self._utf8 = "SMTPUTF8" in event.parameters
                self._body = event.parameters.get("BODY") or "7BIT"
        elif isinstance(event, RcptTo):
            if positive:
                self._recipients += 1
                self.state = State.RCPT
            else:
                self._recipients_refused = True
        elif isinstance(event, DataCommand) and event.chunked:
            # The first BDAT refused: its chunk is still to be read, and thrown away; the
            # transaction is over (RFC 3030 section 2: no more chunks may follow).
            self._discard_chunk(None, after=State.READY)
        elif isinstance(event, DataCommand):
            if reply.code == 354:
                self.state = State.DATA
                limit = self.settings.max_message_size
                self._reader = DataReader(
                    max_size=limit or None,
                    max_line=self.settings.max_text_line,
                    reject_bare_line_ends=self.settings.reject_bare_line_ends,
                )
        elif isinstance(event, MessageEnd):
            if positive:
                self.messages += 1
                # As Postfix does: the limit is on errors without delivering mail, so a
                # client that gets its mail through starts again from zero.
                self.errors = 0
            self._reset_transaction()
            self.state = State.READY
        elif isinstance(event, StartTLS) and reply.code == 220:
            self.state = State.TLS
            self._in.clear()  # pipelined after STARTTLS: discarded, never executed
        elif isinstance(event, Turn) and positive:
            # The roles reverse (RFC 2645 section 5.3): what comes next is a server's
            # greeting, for the program's client to read; nothing more is parsed here.
            self._emit(reply)
            self.state = State.TURNED
            self._in.clear()
            return
        elif isinstance(event, Auth | AuthResponse):
            # 334: the exchange goes on, and the next line is the client's response.
            self.state = State.AUTH if reply.code == 334 else State.READY
            if reply.code == 235:
                self.authenticated = True
        if reply.code == 421:
            self._close(reply)
        elif reply.code >= 500:
            self._error(reply)  # a refusal counts toward the error limit, as in Postfix
        else:
            self._emit(reply)

    def challenge(self, data: bytes) -> None:
        """Answer the pending ``Auth`` or ``AuthResponse`` with a SASL challenge (334)."""
        if not isinstance(self._pending, Auth | AuthResponse):
            raise RuntimeError("a challenge answers AUTH or a SASL response only")
        self.respond(replies.challenge(data))

    def tls_started(self) -> None:
        """The TLS handshake that followed STARTTLS is done: start the session again.

        RFC 3207 section 4.2: the server forgets everything it learnt from the client that
        did not come from the TLS negotiation itself, so the client must say EHLO again."""
        if self.state is not State.TLS:
            raise RuntimeError("tls_started() without a STARTTLS answered 220")
        self.tls_active = True
        self.state = State.START
        self.helo_name = ""
        self.extended = False
        self.authenticated = False  # an AUTH before STARTTLS does not carry over
        self._in.clear()
        self._discarding_long_line = False
        self._reset_transaction()

    def abort(self, reply: Reply) -> None:
        """Say ``reply`` (a 421: timeout, shutdown) out of turn and close the session."""
        self._pending = None
        self._close(reply)

    # -- reading ------------------------------------------------------------------------------
    def next_event(self) -> Event | _Sentinel:
        while True:
            if self.state is State.CLOSED:
                return ConnectionClosed()
            if self._pending is not None:
                return PAUSED
            if self.state is State.GREETING:
                return NEED_DATA  # early talkers wait for the greeting
            if self.state in (State.TLS, State.TURNED):
                return PAUSED  # the program is doing the TLS handshake, or is the client now
            if self.state is State.DATA:
                return self._next_data_event()
            if self.state is State.CHUNK:
                chunk_event = self._next_chunk_event()
                if chunk_event is None:
                    continue
                return chunk_event
            line = self._next_line()
            if line is None:
                if self.closed:
                    continue  # an over-long or bare-LF line was the last error allowed
                return NEED_DATA
            if self.state is State.AUTH:
                event = self._sasl_response(line)
            else:
                event = self._handle_line(line)
            if event is not None:
                if event.needs_reply:
                    self._pending = event
                return event

    def _next_line(self) -> bytes | None:
        """One command line without its CRLF, or None when no complete line is buffered.

        A line over the limit is answered with 500 and skipped; a line ended by a bare LF is
        answered with 500 (the client would otherwise wait forever for an answer)."""
        buf = self._in
        limit = _SASL_LINE if self.state is State.AUTH else self.settings.max_command_line
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) >= limit:
                    # Keep nothing but a trailing CR that may pair with the next byte.
                    self._discarding_long_line = True
                    tail = buf[-1:] if buf.endswith(b"\r") else b""
                    buf[:] = tail
                return None
            if self._discarding_long_line:
                del buf[: end + 1]
                self._discarding_long_line = False
                self._error(replies.LINE_TOO_LONG)
                if self.closed:
                    return None
                continue
            if end + 1 > limit:
                del buf[: end + 1]
                self._error(replies.LINE_TOO_LONG)
                if self.closed:
                    return None
                continue
            if end == 0 or buf[end - 1] != 0x0D:
                del buf[: end + 1]
                self._error(replies.BARE_LF_IN_COMMAND)
                if self.closed:
                    return None
                continue
            line = bytes(buf[: end - 1])
            del buf[: end + 1]
            return line

    def _handle_line(self, raw: bytes) -> Event | None:
        if self.command_budget is not None:
            if self.command_budget <= 0:
                self._close(replies.too_many_commands(self.settings.hostname))
                return None
            self.command_budget -= 1
        try:
            # Commands are ASCII (RFC 5321 section 2.4), but for the UTF-8 addresses of MAIL
            # and RCPT where SMTPUTF8 is offered (RFC 6531, checked there); CR, NUL and other
            # controls in them are garbage, not something to parse around.
            line = raw.decode("utf-8" if self.settings.smtputf8 else "ascii")
            if not line.isprintable():
                raise UnicodeDecodeError("utf-8", raw, 0, len(raw), "control character")
            if not line.isascii() and line[:4].upper() not in ("MAIL", "RCPT"):
                raise UnicodeDecodeError("ascii", raw, 0, len(raw), "not a MAIL or RCPT")
        except UnicodeDecodeError:
            self._error(replies.INVALID_CHARACTERS)
            return None
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        handler = _HANDLERS.get(verb)
        if (
            handler is None
            or (verb == "STARTTLS" and not self._offers_tls)
            or (verb == "AUTH" and not self.settings.auth_mechanisms)
            or (verb == "BDAT" and not self.settings.chunking)
            or (verb == "ETRN" and not self.settings.etrn)
            or (verb == "ATRN" and not self.settings.atrn)
        ):
            if verb in _NOT_OFFERED:
                self._error(replies.NOT_IMPLEMENTED)
            else:
                self._error(replies.COMMAND_UNRECOGNIZED)
            return None
        if verb == "BDAT":
            # Before the sequence check: even a BDAT out of sequence has its chunk read.
            try:
                return self._on_bdat(verb, argument)
            except CommandError as error:
                self._error(error.reply)
                return None
        if not in_sequence(verb, self.state, tls_active=self.tls_active):
            self._error(
                sequence_error(
                    verb,
                    self.state,
                    recipients_refused=self._recipients_refused,
                    tls_active=self.tls_active,
                )
            )
            return None
        try:
            return handler(self, verb, argument)
        except CommandError as error:
            self._error(error.reply)
            return None

    # -- command handlers: return an event, or None when the core answered itself ------------
    def _on_hello(self, verb: str, argument: str) -> Event | None:
        name = argument.strip(" ")
        if not name:
            if self.settings.classic and verb == "HELO":
                return Hello("", extended=False)
            raise CommandError(replies.syntax(f"Syntax: {verb} <domain>: your domain is missing"))
        if " " in name and not self.settings.classic:
            raise CommandError(
                replies.syntax(f"Syntax: {verb} <domain>: one domain name, no spaces")
            )
        if name.startswith("[") and not valid_domain(name):
            raise CommandError(
                replies.syntax(f"{verb}: invalid address literal {_printable(name)}")
            )
        # Any other single token is taken as given, as Postfix does by default: rejecting
        # hostnames with an underscore would turn away real clients for no gain.
        return Hello(name, extended=verb == "EHLO")

    def _on_mail(self, verb: str, argument: str) -> Event | None:
        if self.settings.auth_required and not self.authenticated:
            needs_tls = self.settings.starttls and not self.tls_active
            raise CommandError(replies.STARTTLS_FIRST if needs_tls else replies.AUTH_REQUIRED)
        path = parse_path(
            argument,
            keyword="FROM",
            for_recipient=False,
            classic=self.settings.classic,
            utf8=True,
        )
        parameters = self._parameters(path.rest)
        for keyword, value in parameters.items():
            if keyword == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    raise CommandError(replies.syntax("SIZE takes a number of octets"))
                limit = self.settings.max_message_size
                if limit and int(value) > limit:
                    raise CommandError(replies.MESSAGE_TOO_BIG)
            elif keyword == "BODY" and self.settings.eightbitmime:
                body = (value or "").upper()
                if body == "BINARYMIME" and not self._offers_binarymime:
                    text = "BODY=BINARYMIME needs CHUNKING, which is not offered"
                    if self.settings.chunking:
                        text = "BODY=BINARYMIME is not offered"
                    raise CommandError(Reply.of(504, text, "5.5.4"))
                if body not in ("7BIT", "8BITMIME", "BINARYMIME"):
                    raise CommandError(replies.syntax("BODY takes 7BIT or 8BITMIME"))
                parameters[keyword] = body
            elif keyword == "SMTPUTF8" and self.settings.smtputf8:
                if value is not None:
                    raise CommandError(replies.syntax("SMTPUTF8 takes no value"))
            elif keyword == "REQUIRETLS" and self._offers_requiretls:
                if value is not None:
                    raise CommandError(replies.syntax("REQUIRETLS takes no value"))
            elif keyword in ("RET", "ENVID") and self.settings.dsn:
                parameters[keyword] = check_mail_dsn(keyword, value)
            elif keyword == "AUTH" and self.settings.auth_mechanisms:
                # RFC 4954 section 5: accepted where AUTH is offered; the identity it claims
                # is not trusted (only an authenticated session's own would be).
                pass
            else:
                raise CommandError(replies.PARAMETERS_NOT_RECOGNIZED)
        utf8_address = path.address is not None and not _is_ascii(path.address)
        if utf8_address and "SMTPUTF8" not in parameters:
            raise CommandError(replies.NEEDS_SMTPUTF8)  # RFC 6531 section 3.4
        return MailFrom(path.address, parameters, verb=verb, raw=path.raw)  # type: ignore[arg-type]

    def _on_rcpt(self, verb: str, argument: str) -> Event | None:
        if self._recipients >= self.settings.max_recipients:
            # RFC 5321 4.5.3.1.10: 452, and the client goes on to DATA with those accepted.
            # Not an error: a pipelining client has sent the rest already, and dropping it at
            # the error limit would lose the whole transaction (Postfix likewise does not
            # count this, up to smtpd_recipient_overshoot_limit).
            self._emit(replies.TOO_MANY_RECIPIENTS)
            return None
        classic = self.settings.classic
        path = parse_path(argument, keyword="TO", for_recipient=True, classic=classic, utf8=True)
        parameters = check_rcpt_parameters(self._parameters(path.rest), dsn=self.settings.dsn)
        assert path.address is not None  # parse_path refuses <> for recipients
        if not self._utf8 and not _is_ascii(path.address):
            # RFC 6531 section 3.4: only in a transaction whose MAIL said SMTPUTF8.
            raise CommandError(replies.NEEDS_SMTPUTF8)
        return RcptTo(path.address, parameters, raw=path.raw, route=path.route)

    def _on_data(self, verb: str, argument: str) -> Event | None:
        self._no_argument(verb, argument)
        if self._body == "BINARYMIME":
            raise CommandError(replies.BINARYMIME_NEEDS_BDAT)  # RFC 3030 section 3
        return DataCommand()

    def _on_bdat(self, verb: str, argument: str) -> Event | None:
        """``BDAT <chunk-size> [LAST]`` (RFC 3030 section 2): its octets are read whatever
        becomes of the command, so that none of them is taken for a command."""
        words = argument.split(" ")
        size_text = words[0]
        last = len(words) == 2 and words[1].upper() == "LAST"
        if (
            not (size_text.isascii() and size_text.isdigit())
            or len(size_text) > 20
            or len(words) > 1 + last
        ):
            # With no size there is nothing to skip: what follows is read as commands.
            raise CommandError(replies.syntax("Syntax: BDAT <size> [LAST]"))
        size = int(size_text)
        self._chunk = ChunkReader(size, last=last)
        state = self.state
        if state is State.RCPT:
            if not self._fits(size):
                self._reset_transaction()
                self._discard_chunk(replies.MESSAGE_TOO_BIG, after=State.READY)
                return None
            event = DataCommand(chunked=True)  # the program opens the message
            self._pending = event
            return event
        if state is State.BDAT:
            if not self._fits(size):
                self._discard_chunk(replies.MESSAGE_TOO_BIG, after=State.READY, abort=True)
                return None
            self.state = State.CHUNK
            return None
        # Out of sequence, as DATA would be; the chunk is skipped before the reply.
        refusal = sequence_error("BDAT", state, recipients_refused=self._recipients_refused)
        self._discard_chunk(refusal, after=state)
        return None

    def _fits(self, size: int) -> bool:
        """Whether a chunk of ``size`` octets keeps the message within the size limit."""
        if self._chunked is not None:
            return self._chunked.fits(size)
        limit = self.settings.max_message_size
        return not limit or size <= limit

    def _discard_chunk(self, reply: Reply | None, *, after: State, abort: bool = False) -> None:
        """Read the current chunk only to throw it away; then say ``reply`` (a refusal) and
        go to ``after``. ``abort``: the transaction under way is given up too."""
        self._chunk_refusal = reply
        self._chunk_aborts = abort
        self._after_chunk = after
        self._discarding_chunk = True
        self.state = State.CHUNK

    def _on_rset(self, verb: str, argument: str) -> Event | None:
        self._no_argument(verb, argument)
        had_transaction = self.state in (State.MAIL, State.RCPT, State.BDAT)
        self._reset_transaction()
        if self.state is not State.START:
            self.state = State.READY
        self._emit(replies.RESET_OK)
        return Reset() if had_transaction else None

    def _on_noop(self, verb: str, argument: str) -> Event | None:
        # RFC 5321 section 4.1.1.9: NOOP may carry a string, which is ignored.
        self._emit(replies.NOOP_OK)
        return None

    def _on_quit(self, verb: str, argument: str) -> Event | None:
        self._no_argument(verb, argument)
        if self.settings.classic:
            self._close(Reply.of(221, f"{self.settings.hostname} closing connection", "2.0.0"))
        else:
            self._close(replies.closing(self.settings.hostname))
        return ConnectionClosed()

    def _on_help(self, verb: str, argument: str) -> Event | None:
        topic = argument.strip(" ").upper()
        offered = self._optional_commands()
        if not topic:
            self._emit(Reply(214, command_list(offered=offered), "2.0.0"))
            return None
        if topic == "STATUS":
            return HelpStatus()  # RFC 821's 211 "system status", for the program to decide
        text = COMMAND_HELP.get(topic)
        # STARTTLS is explained while TLS is active too (where it gets 503), as before.
        explained = offered | ({"STARTTLS"} if self._offers_tls else set())
        if text is None or (topic in OPTIONAL_COMMANDS and topic not in explained):
            raise CommandError(
                Reply.of(504, f"HELP: no such command {_printable(topic)}; try HELP", "5.5.4")
            )
        self._emit(Reply(214, (*text, "End of HELP info"), "2.0.0"))
        return None

    def _optional_commands(self) -> frozenset[str]:
        """The optional commands this session offers now, as its EHLO reply lists them."""
        offered = set()
        if self.settings.starttls and not self.tls_active:
            offered.add("STARTTLS")
        if self._auth_offered:
            offered.add("AUTH")
        if self.settings.chunking:
            offered.add("BDAT")
        if self.settings.etrn:
            offered.add("ETRN")
        if self.settings.atrn and self._auth_offered:
            offered.add("ATRN")
        return frozenset(offered)

    def _on_vrfy(self, verb: str, argument: str) -> Event | None:
        target = argument.strip(" ")
        if not target:
            raise CommandError(replies.syntax(f"Syntax: {verb} <address>"))
        return Verify(target) if verb == "VRFY" else Expand(target)

    def _on_turn(self, verb: str, argument: str) -> Event | None:
        self._no_argument(verb, argument)
        return Turn()

    def _on_atrn(self, verb: str, argument: str) -> Event | None:
        """``ATRN [domain *("," domain)]`` (RFC 2645 section 5.2)."""
        if not self.authenticated:
            raise CommandError(replies.AUTH_REQUIRED)  # section 4: 530
        text = argument.strip(" ")
        domains = tuple(d.strip(" ").lower() for d in text.split(",")) if text else ()
        for domain in domains:
            if not domain or domain.startswith("[") or not valid_domain(domain):
                raise CommandError(replies.syntax("Syntax: ATRN [domain[,domain...]]"))
        return Turn(verb="ATRN", domains=domains)

    def _on_etrn(self, verb: str, argument: str) -> Event | None:
        """``ETRN [@|#]node`` (RFC 1985 section 5)."""
        text = argument.strip(" ")
        option = text[:1] if text[:1] in ("@", "#") else ""
        node = text[len(option) :]
        if not node or " " in node:
            raise CommandError(replies.syntax("Syntax: ETRN [@|#]<domain>"))
        if option != "#" and (node.startswith("[") or not valid_domain(node)):
            raise CommandError(replies.syntax(f"ETRN: {_printable(node)} is not a domain"))
        return Etrn(node.lower() if option != "#" else node, option)  # type: ignore[arg-type]

    def _on_starttls(self, verb: str, argument: str) -> Event | None:
        if argument.strip(" "):
            # RFC 3207 section 4: "501 Syntax error (no parameters allowed)"
            raise CommandError(replies.syntax("Syntax: STARTTLS takes no parameters"))
        return StartTLS()

    def _on_auth(self, verb: str, argument: str) -> Event | None:
        if self.authenticated:
            raise CommandError(replies.ALREADY_AUTHENTICATED)  # RFC 4954 section 4
        if not self.extended:
            raise CommandError(replies.bad_sequence("Send EHLO first"))
        if not self._auth_offered:
            # RFC 4954 section 6: the mechanisms may be used only over an encrypted channel.
            raise CommandError(replies.ENCRYPTION_REQUIRED)
        words = argument.strip(" ").split(" ")
        if not words[0] or len(words) > 2:
            raise CommandError(replies.syntax("Syntax: AUTH <mechanism> [initial-response]"))
        mechanism = words[0].upper()
        if mechanism not in self.settings.auth_mechanisms:
            raise CommandError(replies.AUTH_UNKNOWN_MECHANISM)
        initial = None
        if len(words) == 2:
            # "=" is the empty initial response, distinct from none at all (section 4).
            initial = b"" if words[1] == "=" else _b64decode(words[1].encode("ascii"))
            if initial is None:
                raise CommandError(replies.AUTH_BAD_BASE64)
        return Auth(mechanism, initial)

    def _sasl_response(self, raw: bytes) -> Event | None:
        """A line read in the middle of a SASL exchange: the client's response, or "*"."""
        if raw == b"*":
            self._error(replies.AUTH_CANCELLED)
            return AuthAborted(replies.AUTH_CANCELLED)
        data = _b64decode(raw)
        if data is None:
            self._error(replies.AUTH_BAD_BASE64)
            return AuthAborted(replies.AUTH_BAD_BASE64)
        return AuthResponse(data)

    # -- DATA ---------------------------------------------------------------------------------
    def _next_data_event(self) -> Event | _Sentinel:
        reader = self._reader
        assert reader is not None
        chunk = reader.feed(self._in)
        if chunk:
            return MessageData(chunk)
        if not reader.finished:
            return NEED_DATA
        self._reader = None
        refusal = reader.refusal
        if refusal is not None:
            self._reset_transaction()
            self.state = State.READY
            self._error(refusal)
            return MessageAborted(refusal)
        event = MessageEnd(reader.size)
        self._pending = event
        return event

    # -- BDAT ---------------------------------------------------------------------------------
    def _next_chunk_event(self) -> Event | _Sentinel | None:
        """The next event of a BDAT chunk, or None when the chunk is done and the core has
        answered it (and reading goes on with the next command)."""
        reader = self._chunk
        assert reader is not None
        piece = reader.feed(self._in)
        if not self._discarding_chunk:
            message = self._chunked
            assert message is not None
            if piece:
                message.add(piece)
                if message.refusal is None:
                    return MessageData(piece)
        if not reader.finished:
            return NEED_DATA
        self._chunk = None
        if self._discarding_chunk:
            self._discarding_chunk = False
            self.state = self._after_chunk
            refusal = self._chunk_refusal
            if refusal is None:  # the program's refusal, already said
                return None
            aborts = self._chunk_aborts
            if aborts:
                self._reset_transaction()
            self._error(refusal)
            return MessageAborted(refusal) if aborts else None
        message = self._chunked
        assert message is not None
        if reader.last:
            message.finish()
        if message.refusal is not None:
            refusal = message.refusal
            self._reset_transaction()
            self.state = State.READY
            self._error(refusal)
            return MessageAborted(refusal)
        if not reader.last:
            self.state = State.BDAT
            self._emit(replies.chunk_received(reader.size))
            return None
        event = MessageEnd(message.size)
        self._pending = event
        return event

    # -- helpers ------------------------------------------------------------------------------
    @property
    def _offers_binarymime(self) -> bool:
        return self.settings.binarymime and self.settings.chunking

    @property
    def _offers_requiretls(self) -> bool:
        """RFC 8689 section 4: REQUIRETLS is offered only over TLS."""
        return self.settings.requiretls and self.tls_active

    @property
    def _auth_offered(self) -> bool:
        """AUTH is listed in EHLO and may be used now (TLS active, or plaintext allowed)."""
        return bool(self.settings.auth_mechanisms) and (
            self.tls_active or self.settings.auth_plaintext
        )

    @property
    def _offers_tls(self) -> bool:
        """STARTTLS is a command here: offered, or TLS active (where it gets 503)."""
        return self.settings.starttls or self.tls_active

    def _parameters(self, text: str) -> dict[str, str | None]:
        parameters = parse_parameters(text)
        if parameters and not self.extended:
            # RFC 5321 section 4.1.1.2: parameters only after EHLO introduced ESMTP.
            raise CommandError(Reply.of(555, "MAIL/RCPT parameters need an EHLO session", "5.5.4"))
        return parameters

    @staticmethod
    def _no_argument(verb: str, argument: str) -> None:
        if argument.strip(" "):
            raise CommandError(replies.syntax(f"Syntax: {verb} takes no argument"))

    def _hello_reply(self, event: Hello) -> Reply:
        hostname = self.settings.hostname
        if not event.extended:
            if self.settings.classic:
                # A bare HELO names the client by its address, as sendmail did.
                client = f"[{self.client_address}]"
                # The name is echoed: cap it so the reply line stays within 512 octets (4.5.3.1.5).
                named = _printable(event.name, 255)
                name = f"{named} {client}" if event.name else client
                return Reply.of(250, f"{hostname} Hello {name}, pleased to meet you")
            return Reply.of(250, hostname)
        lines = [hostname]
        if self.settings.pipelining:
            lines.append("PIPELINING")
        if self.settings.max_message_size:
            lines.append(f"SIZE {self.settings.max_message_size}")
        else:
            lines.append("SIZE")
        if self.settings.eightbitmime:
            lines.append("8BITMIME")
        if self.settings.smtputf8:
            lines.append("SMTPUTF8")
        if self.settings.chunking:
            lines.append("CHUNKING")
        if self._offers_binarymime:
            lines.append("BINARYMIME")
        if self._offers_requiretls:
            lines.append("REQUIRETLS")
        if self.settings.dsn:
            lines.append("DSN")
        if self.settings.starttls and not self.tls_active:
            # RFC 3207 section 4.2: never listed again once TLS is active.
            lines.append("STARTTLS")
        if self._auth_offered:
            lines.append("AUTH " + " ".join(self.settings.auth_mechanisms))
        if self.settings.etrn:
            lines.append("ETRN")
        if self.settings.atrn and self._auth_offered:
            lines.append("ATRN")  # RFC 2645: with AUTH, which ATRN needs
        if self.settings.enhanced_status_codes:
            lines.append("ENHANCEDSTATUSCODES")
        lines.append("HELP")
        return Reply(250, tuple(lines))

    def _reset_transaction(self) -> None:
        self._recipients = 0
        self._recipients_refused = False
        self._reader = None
        self._chunked = None
        self._utf8 = False  # MAIL said SMTPUTF8: UTF-8 recipients may follow
        self._body = "7BIT"  # MAIL's BODY

    def _emit(self, reply: Reply) -> None:
        # RFC 2034 section 3: enhanced codes once offered, never in the greeting or EHLO reply
        # (which carry no status in the catalogue).
        enhanced = self.extended and self.settings.enhanced_status_codes
        self._out.append(reply.to_bytes(enhanced=enhanced))

    def _error(self, reply: Reply) -> None:
        """Answer a client error; too many of them and the session is dropped (421)."""
        if self.state is State.AUTH:
            self.state = State.READY  # an error in a SASL exchange ends it
        self._emit(reply)
        self.errors += 1
        if self.settings.max_errors and self.errors >= self.settings.max_errors:
            self._close(replies.too_many_errors(self.settings.hostname))

    def _close(self, reply: Reply) -> None:
        self._emit(reply)
        self.state = State.CLOSED
        self._in.clear()
        self._pending = None


def _b64decode(data: bytes) -> bytes | None:
    """Strict base64 (RFC 4648 section 4: whole quanta, padding only at the end, nothing
    else), or None."""
    if len(data) % 4:
        return None
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _is_ascii(address: Address) -> bool:
    return address.local_part.isascii() and address.domain.isascii()


# Each command verb's handler: a method of ServerConnection, called with the connection (a
# table outside the class, which compiled classes cannot hold as a class attribute).
_Handler = Callable[[ServerConnection, str, str], Event | None]
_HANDLERS: Final[dict[str, _Handler]] = {
    "HELO": ServerConnection._on_hello,
    "EHLO": ServerConnection._on_hello,
    "MAIL": ServerConnection._on_mail,
    "SEND": ServerConnection._on_mail,
    "SOML": ServerConnection._on_mail,
    "SAML": ServerConnection._on_mail,
    "RCPT": ServerConnection._on_rcpt,
    "DATA": ServerConnection._on_data,
    "RSET": ServerConnection._on_rset,
    "NOOP": ServerConnection._on_noop,
    "QUIT": ServerConnection._on_quit,
    "HELP": ServerConnection._on_help,
    "VRFY": ServerConnection._on_vrfy,
    "EXPN": ServerConnection._on_vrfy,
    "TURN": ServerConnection._on_turn,
    "ATRN": ServerConnection._on_atrn,
    "ETRN": ServerConnection._on_etrn,
    "STARTTLS": ServerConnection._on_starttls,
    "BDAT": ServerConnection._on_bdat,
    "AUTH": ServerConnection._on_auth,
}
