"""One SMTP session: bytes from the socket into ``pigeon.smtp``, its events into decisions.

The session is an ``asyncio.Protocol``, not a stream reader: ``data_received`` parses and
answers everything it can synchronously, and writes the replies of a pipelined batch in one
``transport.write``. Only the end of a message waits (for the spool's fsync); meanwhile the
core holds any pipelined commands in its buffer, and reading pauses if that grows too big.

TLS: on STARTTLS the session writes the 220, pauses reading at once and upgrades the same
connection with ``loop.start_tls``, keeping itself as the protocol; whatever the client sent
after STARTTLS in the clear has been thrown away by the core. On an implicit-TLS listener
(see ``app.Server``) the session begins after the handshake, on the TLS transport. Either
way the context is the one current when the handshake starts, so a SIGHUP reload reaches new
sessions only.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from pigeon import __version__, metrics, transcripts
from pigeon.dns import reverse_name
from pigeon.log import event as log
from pigeon.log import event_at
from pigeon.policy import Admission, CommandRate, check_sender_login
from pigeon.queue.envelope import Envelope
from pigeon.queue.spool import MessageWriter, SpoolError
from pigeon.smtp import (
    NEED_DATA,
    PAUSED,
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
    Reply,
    Reset,
    ServerConnection,
    StartTLS,
    State,
    Turn,
    Verify,
    replies,
)

from .auth import SessionAuth
from .etrn import etrn_reply
from .odmr import OnDemandRelay
from .terminals import terminal_refusal
from .tls import SHUTDOWN_TIMEOUT, describe, handshake_timeout

if TYPE_CHECKING:
    from .context import Listener

__all__ = ["Session"]

# Pause reading when this much unparsed input piles up behind a pending reply.
_HIGH_WATER = 256 * 1024
_session_ids = itertools.count(1)


_date_cache: tuple[int, str] = (0, "")


def _rfc5322_now() -> str:
    """The date for a Received line; formatted once a second, not once a message."""
    global _date_cache
    second = int(time.time())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.format_datetime(email.utils.localtime()))
    return _date_cache[1]


class Session(asyncio.Protocol):
    # Slots, not a __dict__: thousands of idle sessions are held at once, and an instance
    # dict past 30 attributes stops sharing its keys (over a KiB more per session).
    __slots__ = (
        "_auth",
        "_busy",
        "_bytes_in",
        "_bytes_out",
        "_client_ip",
        "_client_name",
        "_client_port",
        "_closing",
        "_command_rate",
        "_conn",
        "_context",
        "_counted",
        "_early",
        "_greeting",
        "_handshaking",
        "_last_activity",
        "_listener",
        "_lost",
        "_mail_parameters",
        "_mode",
        "_on_lost",
        "_paused",
        "_recipient_parameters",
        "_recipients",
        "_sender",
        "_tasks",
        "_timer",
        "_transcript",
        "_transport",
        "_writer",
        "id",
        "tls",
    )

    def __init__(self, listener: Listener, *, on_lost: Callable[[], None] | None = None) -> None:
        """``on_lost`` is called once the connection is gone, after the session ended."""
        self._listener = listener
        self._on_lost = on_lost
        self._context = listener.context
        self.id = f"{next(_session_ids):x}"
        self._transport: asyncio.Transport | None = None
        self._conn: ServerConnection | None = None
        self._client_ip = ""
        self._client_port = 0
        self._client_name: str | None = None  # from reverse DNS, when configured
        self._busy = False  # waiting for the spool; events stay queued in the core
        self._paused = False
        self._closing = False  # shutdown asked: leave after the transaction under way
        self._last_activity = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._lost = False
        # TLS: the handshake is under way (reading paused, nothing written), and the
        # decrypted bytes that arrived before this session took over the TLS transport.
        self._handshaking = False
        self._early: list[bytes] = []
        self.tls: str | None = None  # "TLSv1.3 with cipher ... (256/256 bits)" once active
        self._auth: SessionAuth | None = None  # made at the first AUTH
        # Abuse controls: the greeting held back (limits.greeting_delay), this connection
        # counted against its address's limit, the command budget of commands_per_minute.
        self._greeting: asyncio.TimerHandle | None = None
        self._counted = False
        self._bytes_in = 0
        self._bytes_out = 0
        self._command_rate: CommandRate | None = None
        self._reset()

    def _reset(self) -> None:
        self._sender: str | None = None
        self._mail_parameters: dict[str, str | None] = {}
        self._recipients: list[str] = []
        self._recipient_parameters: list[tuple[tuple[str, str | None], ...]] = []
        self._mode = "mail"  # or RFC 821's "send", "soml", "saml" (Envelope.mode)
        self._discard_writer()

    def _discard_writer(self) -> None:
        writer: MessageWriter | None = getattr(self, "_writer", None)
        if writer is not None:
            writer.discard()
        self._writer: MessageWriter | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)
        peer = self._transport.get_extra_info("peername") or ("", 0)
        self._client_ip, self._client_port = str(peer[0]), int(peer[1])
        if self._client_ip.startswith("::ffff:"):
            self._client_ip = self._client_ip[7:]
        implicit = self._listener.implicit_tls
        conn = ServerConnection(
            self._listener.settings_for(self._client_ip),
            client_address=self._client_ip,
            tls=implicit,
        )
        self._conn = conn
        context = self._context
        log("connect", session=self.id, client=f"{self._client_ip}:{self._client_port}")
        metrics.SESSIONS_OPEN.inc()
        self._transcript = transcripts.start(self.id, f"{self._client_ip}:{self._client_port}")
        if implicit:  # the handshake is done already (RFC 8314)
            self.tls = describe(self._transport.get_extra_info("ssl_object"))
            log("tls", session=self.id, client=self._client_ip, tls=self.tls)
        refusal: Reply | None = None
        if context.shutting_down:
            refusal = replies.shutting_down(context.config.hostname)
        elif len(context.sessions) >= context.config.limits.connections:
            refusal = replies.too_many_connections(context.config.hostname)
            log("refused", session=self.id, client=self._client_ip, reason="too many connections")
            metrics.refused("connections")
        elif (
            admission := context.client_limits.open_connection(self._client_ip)
        ) is Admission.REFUSED:
            refusal = replies.too_many_connections_from(context.config.hostname, self._client_ip)
            log(
                "refused",
                session=self.id,
                client=self._client_ip,
                reason="too many connections from this address",
            )
            metrics.refused("connections")
        else:
            self._counted = admission is Admission.COUNTED
            context.sessions.add(self)
        if refusal is not None:
            conn.start(refusal)
        else:
            limits = context.config.limits
            if limits.commands_per_minute:
                self._command_rate = CommandRate(limits.commands_per_minute)
            delay = limits.greeting_delay
            if delay and not context.relay.is_trusted(self._client_ip):
                # As Postfix's postscreen: a client that talks before the greeting is not
                # waiting for replies, which is what spam engines do (RFC 5321 3.1, 4.3.1).
                self._greeting = context.loop.call_later(delay, self._greet)
            else:
                self._greet()
            if context.resolver is not None:
                self._spawn(self._look_up_client())
        self._flush()

    def _greet(self) -> None:
        self._greeting = None
        conn = self._conn
        assert conn is not None
        if self._lost or conn.state is not State.GREETING:
            return  # gone, or turned away meanwhile (shutdown)
        conn.start()
        self._touch()
        self._arm_timer()
        self._flush()

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        assert conn is not None
        self._touch()
        if self._handshaking:
            # Reading was paused before the handshake began, so these bytes came through TLS
            # after it ended, before start_tls() returned: keep them for the new session.
            self._early.append(data)
            return
        if self._greeting is not None:
            self._greeting.cancel()
            self._greeting = None
            event_at(logging.WARNING, "early_talker", session=self.id, client=self._client_ip)
            conn.start(replies.early_talker(self._context.config.hostname))
            self._flush()
            return
        self._bytes_in += len(data)
        self._transcript.client(data)
        conn.receive_data(data)
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        # Called by the transport, or by a failed TLS handshake (after which asyncio may or
        # may not call it too): only once counts.
        if self._lost:
            return
        self._lost = True
        context = self._context
        context.sessions.discard(self)
        metrics.SESSIONS_OPEN.dec()
        # Counted once per session: a metric update costs more than the counting, and a
        # session's octets are worth knowing when it ends.
        metrics.BYTES_IN.inc(self._bytes_in)
        metrics.BYTES_OUT.inc(self._bytes_out)
        self._transcript.end()
        if self._greeting is not None:
            self._greeting.cancel()
        if self._counted:
            self._counted = False
            context.client_limits.close_connection(self._client_ip)
        if context.shutting_down and not context.sessions:
            context.drained.set()
        if self._timer is not None:
            self._timer.cancel()
        self._discard_writer()
        conn = self._conn
        log(
            "disconnect",
            session=self.id,
            client=self._client_ip,
            messages=conn.messages if conn else 0,
            errors=conn.errors if conn else 0,
            # After 221 or 421 the client may hang up as it likes (a TLS client often resets
            # the connection instead of answering close_notify): not worth a reason.
            reason=str(exc) if exc and not (conn and conn.closed) else None,
        )
        if self._on_lost is not None:
            self._on_lost()

    # -- TLS ----------------------------------------------------------------------------------
    def _start_tls(self) -> None:
        """Begin the handshake on this connection, after STARTTLS's 220. Reading stops now,
        before another byte is taken in the clear; ``loop.start_tls`` resumes it under TLS.

        (Pausing works here, inside ``data_received``; uvloop would undo a pause made in
        ``connection_made``, which is one reason implicit TLS does not come this way.)"""
        tls = self._context.tls
        transport = self._transport
        assert tls is not None
        assert transport is not None
        self._handshaking = True
        transport.pause_reading()
        self._spawn(self._handshake(transport, tls.context))

    async def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        secure: asyncio.BaseTransport | None = None
        reason = "connection closed during the handshake"
        try:
            secure = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=handshake_timeout(self._context.config.limits),
                ssl_shutdown_timeout=SHUTDOWN_TIMEOUT,
            )
        except Exception as error:  # any failure ends the session the same way
            reason = str(error) or type(error).__name__
        if secure is None or secure.is_closing() or self._lost:
            client = self._client_ip
            event_at(logging.WARNING, "tls_failed", session=self.id, client=client, reason=reason)
            self._handshaking = False
            if not transport.is_closing():
                transport.abort()
            self.connection_lost(None)
            return
        self._transport = cast(asyncio.Transport, secure)
        self._handshaking = False
        self._paused = False  # a new transport, reading
        self.tls = describe(secure.get_extra_info("ssl_object"))
        log("tls", session=self.id, client=self._client_ip, tls=self.tls)
        conn = self._conn
        assert conn is not None
        conn.tls_started()  # forgets the EHLO, and anything sent after STARTTLS
        self._touch()
        early, self._early = b"".join(self._early), []
        if early:
            conn.receive_data(early)
        self._pump()

    # -- the event loop of one session --------------------------------------------------------
    def _pump(self) -> None:
        conn = self._conn
        assert conn is not None
        if self._command_rate is not None:
            conn.command_budget = self._command_rate.grant(conn.command_budget)
        while not self._busy:
            if self._closing and conn.is_idle:
                conn.abort(replies.shutting_down(self._context.config.hostname))
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            assert isinstance(event, Event)
            if isinstance(event, ConnectionClosed):
                self._flush()
                self._close()
                return
            self._dispatch(event)
        self._flush()
        self._apply_backpressure(conn)

    def _dispatch(self, event: Event) -> None:
        conn = self._conn
        assert conn is not None
        if isinstance(event, MessageData):
            if self._writer is not None:
                self._writer.write(event.data)
        elif isinstance(event, Hello):
            self._reset()
            conn.accept()
        elif isinstance(event, MailFrom):
            self._on_mail(event)
        elif isinstance(event, RcptTo):
            self._on_rcpt(event)
        elif isinstance(event, DataCommand):
            self._on_data()
        elif isinstance(event, MessageEnd):
            self._busy = True
            self._spawn(self._commit(event))
        elif isinstance(event, MessageAborted):
            log(
                "message",
                session=self.id,
                client=self._client_ip,
                result="refused",
                reason=event.reply.text,
            )
            metrics.refused("message")
            self._reset()
        elif isinstance(event, Reset):
            self._reset()
        elif isinstance(event, Verify):
            authenticated = self.auth_user is not None
            conn.respond(self._listener.verify.verify(event.argument, authenticated=authenticated))
        elif isinstance(event, Expand):
            authenticated = self.auth_user is not None
            conn.respond(self._listener.verify.expand(event.argument, authenticated=authenticated))
        elif isinstance(event, HelpStatus):
            conn.respond(self._status_reply())
        elif isinstance(event, Turn):
            self._busy = True  # the queue is read in a thread; then maybe the roles reverse
            self._spawn(self._on_turn(event))
        elif isinstance(event, Etrn):
            self._busy = True
            self._spawn(self._on_etrn(event))
        elif isinstance(event, StartTLS):
            self._on_starttls()
        elif isinstance(event, Auth | AuthResponse):
            self._busy = True  # the store is read in a thread; a failure waits its delay
            self._spawn(self._authenticate(event))
        elif isinstance(event, AuthAborted):
            if self._auth is not None:
                self._auth.cancelled()
        elif event.needs_reply:
            conn.respond(replies.NOT_IMPLEMENTED)

    def _on_starttls(self) -> None:
        conn = self._conn
        assert conn is not None
        if self._context.tls is None or self._closing:
            conn.respond(replies.TLS_NOT_AVAILABLE)
            return
        self._reset()
        conn.accept()  # 220; the core drops what was pipelined after STARTTLS
        self._flush()  # the 220 is the last thing said in the clear
        self._start_tls()

    def _on_mail(self, event: MailFrom) -> None:
        conn = self._conn
        assert conn is not None
        if event.verb != "MAIL" and not self._listener.config.send_commands:
            conn.respond(replies.NOT_IMPLEMENTED)  # obsolete (RFC 5321 4.1.1), off unless asked
            return
        if not self._context.has_free_disk():
            conn.respond(replies.INSUFFICIENT_STORAGE)
            log("refused", session=self.id, client=self._client_ip, reason="disk below floor")
            metrics.refused("disk")
            return
        refusal = check_sender_login(
            event.sender, self.auth_user, enforce=self._listener.config.sender_login_match
        )
        if refusal is not None:
            conn.respond(refusal)
            log("refused", session=self.id, client=self._client_ip, reply=str(refusal))
            metrics.refused("sender")
            return
        if self._over_limits():
            return
        self._reset()
        self._sender = "" if event.sender is None else str(event.sender)
        self._mail_parameters = event.parameters
        self._mode = event.verb.lower()
        conn.accept()

    def _over_limits(self) -> bool:
        """At MAIL: the session's message count and the client's (and user's) message rate.
        True when MAIL was refused."""
        conn = self._conn
        assert conn is not None
        context = self._context
        per_session = context.config.limits.messages_per_session
        if per_session and conn.messages >= per_session:
            conn.respond(replies.too_many_messages(context.config.hostname))
            log("refused", session=self.id, client=self._client_ip, reason="too many messages")
            metrics.refused("rate")
            return True
        refusal = context.client_limits.check_message(self._client_ip, self.auth_user)
        if refusal is not None:
            conn.respond(refusal)
            log("refused", session=self.id, client=self._client_ip, reply=str(refusal))
            metrics.refused("rate")
            return True
        return False

    def _on_rcpt(self, event: RcptTo) -> None:
        conn = self._conn
        assert conn is not None
        policy = self._context.relay
        recipient = policy.canonical_recipient(event.recipient)
        declared = self._mail_parameters.get("SIZE") or "0"
        verdict = policy.check_recipient(
            recipient,
            self._client_ip,
            authenticated=self.auth_user is not None,
            sender=self._sender,
            size=int(declared) if declared.isdigit() else 0,
        )
        # A positive verdict is an acceptance with its own words (251 "will forward").
        refusal = None if verdict is None or verdict.is_positive else verdict
        if refusal is None and self._mode == "send":
            refusal = terminal_refusal(self._context, recipient)
        if refusal is not None:
            conn.respond(refusal)
            log(
                "rcpt_refused",
                session=self.id,
                client=self._client_ip,
                to=f"<{recipient}>",
                reply=str(refusal),
            )
            metrics.refused("recipient")
            return
        # Domains are case-insensitive; local parts are kept as sent (RFC 5321 2.4).
        self._recipients.append(str(Address(recipient.local_part, recipient.domain.lower())))
        self._recipient_parameters.append(tuple(event.parameters.items()))
        if verdict is None:
            conn.accept()
        else:
            conn.respond(verdict)

    def _on_data(self) -> None:
        conn = self._conn
        assert conn is not None
        if self._closing:
            conn.respond(replies.shutting_down(self._context.config.hostname))
            return
        writer = self._context.spool.new_message()
        self._writer = writer
        writer.write(self._received_header(writer.queue_id))
        conn.accept()

    async def _commit(self, end: MessageEnd) -> None:
        conn = self._conn
        assert conn is not None
        writer = self._writer
        self._writer = None
        try:
            if writer is None or conn.closed:
                return
            envelope = Envelope(
                sender=self._sender or "",
                recipients=tuple(self._recipients),
                recipient_parameters=(
                    tuple(self._recipient_parameters) if any(self._recipient_parameters) else ()
                ),
                client_address=self._client_ip,
                client_name=self._client_name or "",
                helo=conn.helo_name,
                protocol=self._protocol(),
                body_type=str(self._mail_parameters.get("BODY") or "7BIT"),
                received_at=time.time(),
                mail_parameters=tuple(self._mail_parameters.items()),
                mode=self._mode,
            )
            try:
                stored = await self._context.spool.commit(writer, envelope)
            except SpoolError as error:
                writer.discard()
                conn.respond(replies.LOCAL_ERROR)
                log(
                    "message",
                    session=self.id,
                    queue_id=writer.queue_id,
                    result="deferred",
                    reason=f"spool: {error}",
                )
                return
            if not conn.closed:
                conn.accept_message(stored.queue_id)
                self._flush()  # the client has its 250 while the queue takes the message
            log(
                "message",
                session=self.id,
                queue_id=stored.queue_id,
                client=self._client_ip,
                helo=conn.helo_name,
                **{"from": f"<{envelope.sender}>"},
                to=",".join(f"<{r}>" for r in envelope.recipients),
                size=stored.size,
                result="queued",
            )
            self._context.scheduler.submit(stored)
            metrics.MESSAGES_ACCEPTED.inc()
        finally:
            self._reset()
            self._busy = False
            if self._transport is not None and not self._transport.is_closing():
                self._pump()

    async def _on_etrn(self, event: Etrn) -> None:
        conn = self._conn
        assert conn is not None
        try:
            try:
                reply = await etrn_reply(self._context, event)
            except Exception as error:  # a bug: the client gets RFC 1985's "unable", not a hang
                event_at(logging.ERROR, "etrn_error", session=self.id, reason=repr(error))
                reply = Reply.of(458, f"Unable to queue messages for node {event.node}", "4.3.0")
            if not conn.closed:
                conn.respond(reply)
        finally:
            self._busy = False
            if self._transport is not None and not self._transport.is_closing():
                self._pump()

    async def _on_turn(self, event: Turn) -> None:
        """TURN and ATRN (RFC 2645): refused, or the roles reverse and this session delivers
        the held mail of the client's domains over its connection, then ends."""
        conn = self._conn
        transport = self._transport
        assert conn is not None
        assert transport is not None
        turn = OnDemandRelay(self._context, self.auth_user, session=self.id)
        try:
            try:
                reply = await turn.prepare(event)
            except Exception as error:  # a bug: RFC 2645's "unable now", not a hang
                event_at(logging.ERROR, "atrn_error", session=self.id, reason=repr(error))
                reply = Reply.of(451, "Unable to process ATRN request now", "4.3.0")
            if conn.closed:
                return
            conn.respond(reply)
            if reply.code != 250:
                return
            self._flush()
            await turn.deliver(transport, client=self._client_ip)
        finally:
            turn.release()
            self._busy = False
            if conn.state is State.TURNED:
                self._close()
                self.connection_lost(None)  # the transport no longer calls this protocol
            elif self._transport is not None and not self._transport.is_closing():
                self._pump()

    def _status_reply(self) -> Reply:
        """HELP STATUS: RFC 821's 211 system status, for trusted and authenticated clients
        only (the rest learn nothing of the server's load: 502)."""
        context = self._context
        if self.auth_user is None and not context.relay.is_trusted(self._client_ip):
            return replies.NOT_IMPLEMENTED
        scheduler = context.scheduler
        uptime = int(time.monotonic() - context.started_at)
        lines = (
            f"{context.config.hostname} Pigeon {__version__} status",
            f"uptime {uptime} seconds",
            f"sessions {len(context.sessions)} open",
            f"queue {scheduler.queued} messages, {scheduler.backlog} being delivered",
            "End of status",
        )
        return Reply(211, lines, "2.0.0")

    # -- helpers ------------------------------------------------------------------------------
    def _received_header(self, queue_id: str) -> bytes:
        """RFC 5321 section 4.4 trace line, prepended to the message as it is stored."""
        conn = self._conn
        assert conn is not None
        helo = conn.helo_name or f"[{self._client_ip}]"
        client = f"{self._client_name or 'unknown'} [{self._client_ip}]"
        lines = [f"Received: from {helo} ({client})"]
        if self.tls is not None:
            lines.append(f"\t(using {self.tls})")  # as Postfix writes it
        lines.append(
            f"\tby {self._context.config.hostname} (Pigeon) with {self._protocol()} id {queue_id}"
        )
        date = _rfc5322_now()
        if len(self._recipients) == 1:
            # Naming the recipient only when there is one keeps Bcc recipients private.
            lines.append(f"\tfor <{self._recipients[0]}>; {date}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    def _protocol(self) -> str:
        """The "with" of the Received line (RFC 3848: ESMTPS is ESMTP under TLS, ESMTPA with
        AUTH, ESMTPSA both). The IANA registry has no name for HELO under TLS; the "using"
        clause says it instead."""
        conn = self._conn
        assert conn is not None
        if not conn.extended:
            return "SMTP"
        if "SMTPUTF8" in self._mail_parameters:
            # RFC 6531 section 3.7.5: UTF8SMTP, with S and A as ESMTP takes them.
            tls = "S" if conn.tls_active else ""
            return f"UTF8SMTP{tls}{'A' if self.auth_user is not None else ''}"
        if self.auth_user is not None:
            return "ESMTPSA" if conn.tls_active else "ESMTPA"
        return "ESMTPS" if conn.tls_active else "ESMTP"

    @property
    def auth_user(self) -> str | None:
        """The authenticated user's address (lower case), or None. STARTTLS forgets it."""
        conn = self._conn
        if self._auth is None or conn is None or not conn.authenticated:
            return None
        return self._auth.user

    async def _authenticate(self, event: Auth | AuthResponse) -> None:
        conn = self._conn
        assert conn is not None
        if self._auth is None:
            context = self._context
            self._auth = SessionAuth(
                context.users,
                failure_delay=context.config.auth.failure_delay,
                session=self.id,
                client=self._client_ip,
            )
        try:
            reply = await self._auth.step(event)
            if not conn.closed:
                conn.respond(reply)
        finally:
            self._busy = False
            if self._transport is not None and not self._transport.is_closing():
                self._pump()

    async def _look_up_client(self) -> None:
        self._client_name = await reverse_name(self._context.resolver, self._client_ip)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._context.loop.create_task(coroutine)
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)

    def _flush(self) -> None:
        conn = self._conn
        transport = self._transport
        if conn is None or transport is None or self._handshaking:
            return
        out = conn.data_to_send()
        if out and not transport.is_closing():
            self._bytes_out += len(out)
            self._transcript.server(out)
            transport.write(out)
        if conn.state is State.CLOSED:
            self._close()

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if self._handshaking:
                self._transport.abort()  # no clear text into a TLS handshake
            else:
                self._transport.close()

    def _apply_backpressure(self, conn: ServerConnection) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._handshaking:
            return
        if not self._paused and conn.buffered > _HIGH_WATER:
            transport.pause_reading()
            self._paused = True
        elif self._paused and conn.buffered <= _HIGH_WATER // 2:
            transport.resume_reading()
            self._paused = False

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _arm_timer(self) -> None:
        conn = self._conn
        assert conn is not None
        limits = self._context.config.limits
        timeout = limits.data_timeout if conn.in_message else limits.command_timeout
        if not timeout:
            return
        remaining = self._last_activity + timeout - time.monotonic()
        self._timer = self._context.loop.call_later(max(remaining, 0.05), self._on_timer)

    def _on_timer(self) -> None:
        """One timer per session, re-armed lazily: cheaper than resetting it on every read."""
        conn = self._conn
        assert conn is not None
        self._timer = None
        if conn.state is State.CLOSED:
            return
        if self._handshaking:
            # The handshake has its own timeout; the command timeout starts again after it.
            self._touch()
            self._arm_timer()
            return
        limits = self._context.config.limits
        timeout = limits.data_timeout if conn.in_message else limits.command_timeout
        if not self._busy and time.monotonic() - self._last_activity >= timeout:
            conn.abort(replies.timeout(self._context.config.hostname))
            log("timeout", session=self.id, client=self._client_ip, state=conn.state.value)
            self._flush()
            self._close()
            return
        self._arm_timer()

    def shut_down(self) -> None:
        """Shutdown: idle sessions get 421 now, busy ones after their transaction."""
        self._closing = True
        conn = self._conn
        if conn is not None and conn.is_idle and not self._busy and not self._handshaking:
            conn.abort(replies.shutting_down(self._context.config.hostname))
            self._flush()
            self._close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
