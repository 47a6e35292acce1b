"""Remote delivery: one message, several recipients, to a domain's mail exchangers over SMTP.

The route (RFC 5321 section 5.1, RFC 7505):

1. With a ``relayhost``, every message goes there (AUTH if configured), with no MX lookup.
2. Otherwise the domain's MX records name the exchangers, lowest preference first and equal
   preferences shuffled (``pigeon.client.resolve_mx``); with no MX at all the domain itself is
   the exchanger (the "implicit MX"); a null MX means the domain takes no mail. Exchangers
   that name this host, and every one of lower priority, are dropped (a mail loop).
3. Each exchanger's addresses are tried in turn, then the next exchanger's, until one gives a
   session: a refused connection, a timeout, or a 4xx or 5xx greeting moves on (Postfix's
   ``smtp_skip_5xx_greeting``). STARTTLS is used whenever offered and certificates are not
   checked (Postfix's security level "may"); when the handshake fails the same address is
   tried again in plain text, since unencrypted beats undelivered for opportunistic TLS.
4. One transaction carries all recipients; every reply is classified, per recipient: 2xx
   delivered, 4xx deferred, 5xx failed.

Once a transaction has begun the message is never taken to another exchanger: a failure from
MAIL on (a dropped connection, garbage, a timeout) defers the recipients not yet answered, so
the queue tries again later. After the final dot has been sent a second attempt may deliver a
second copy (RFC 1047 explains why SMTP cannot avoid that); the detail then says so.

What each failure becomes (RFC 3463 codes, chosen as Postfix does):

========================================  =========  ======
situation                                 outcome    status
========================================  =========  ======
a reply from the server                   by class   its enhanced code, else X.0.0
domain does not exist (NXDOMAIN)          FAILED     5.1.2
null MX                                   FAILED     5.1.10
no MX and no address / no MX has one      FAILED     5.4.4
the best exchanger is this host           FAILED     5.4.6
DNS timeout or SERVFAIL                   DEFERRED   4.4.3
no DNS resolver configured                DEFERRED   4.3.5
no exchanger reachable                    DEFERRED   4.4.1 (or the greeting's code, as 4.x.x)
TLS required (relay) but not offered      DEFERRED   4.7.4
TLS required (relay) but failing          DEFERRED   4.7.5
relay refuses our credentials             DEFERRED   4.7.0
connection lost or timeout mid-message    DEFERRED   4.4.2
reply that is not SMTP mid-message        DEFERRED   4.4.2
8-bit address, server lacks SMTPUTF8      FAILED     5.6.7
address that SMTP cannot carry            FAILED     5.1.3 (recipient), 5.1.7 (sender)
relayhost name not found                  DEFERRED   4.4.4
REQUIRETLS: no verified TLS/REQUIRETLS    DEFERRED   4.7.30
REQUIRETLS: MX not DNSSEC-validated       FAILED     5.7.30
a bug (logged with its traceback)         DEFERRED   4.3.0
========================================  =========  ======

``detail`` names the remote host and quotes its reply, as Postfix does, so that a bounce can
show the sender what the other side said: ``mx.remote.test[192.0.2.7] said: 550 5.1.1 User
unknown (in reply to RCPT TO command)``.

The agent is asynchronous (the client is asyncio) and keeps nothing between calls but its
settings; a session (``SmtpAgent.session``) holds one connection for several messages.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.resolver

from pigeon.client import (
    AuthError,
    MailExchanger,
    MXError,
    RecipientResult,
    SendError,
    SMTPClient,
    TLSError,
    TLSMode,
    resolve_mx,
    resolve_mx_authenticated,
)
from pigeon.config import ConfigError, parse_host_port
from pigeon.delivery.result import DeliveryResult, Outcome
from pigeon.dns import authenticating
from pigeon.queue.envelope import Envelope
from pigeon.smtp import parse_mailbox

__all__ = ["SmtpAgent", "SmtpSession"]

_log = logging.getLogger(__name__)

# A hostile server can send a reply of a thousand 4 KiB lines; what reaches the queue record
# and the bounce is cut to this many characters.
_MAX_REPLY_TEXT: Final = 1000

# How Postfix names each reply's command in "(in reply to ... command)".
_COMMAND_NAMES: Final = {
    "MAIL": "MAIL FROM",
    "RCPT": "RCPT TO",
    "DATA": "DATA",
    ".": "end of DATA",
}

# How long QUIT may take before the connection is simply dropped.
_QUIT_TIMEOUT: Final = 10.0

# "localhost" is loopback by definition (RFC 6761 section 6.3), no lookup needed.
_LOCALHOST: Final = ("127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class _Failure:
    """Why no recipient of a message could be handed over; the same for all of them."""

    outcome: Outcome
    status: str
    detail: str

    def results(self, recipients: Sequence[str]) -> list[DeliveryResult]:
        return [_result(r, self.outcome, self.status, self.detail) for r in recipients]


@dataclass(frozen=True, slots=True)
class _Lookup:
    """The addresses of one host, or why there are none and the status that says so
    (4.x.x: it may change by itself; 5.x.x: the DNS says there are none)."""

    addresses: list[str]
    problem: str = ""
    status: str = ""

    @property
    def temporary(self) -> bool:
        return self.status.startswith("4")


@dataclass(frozen=True, slots=True)
class _Target:
    """One host to connect to: its name, how to reach it, and how to talk to it."""

    host: str
    port: int
    tls: TLSMode
    username: str | None = None
    password: str | None = None


class SmtpAgent:
    """Deliver over SMTP to a domain's exchangers, or to a relay host.

    ``hostname`` is what EHLO says (and the name that means "this host" in an MX list).
    ``resolver`` asks the DNS servers the administrator named; with None, only a relayhost
    given as an address (or "localhost") or a domain literal can be reached: Pigeon never
    falls back to the system's resolver. ``port`` is the exchangers' port (25; other values
    are for tests). ``relayhost`` ("host:port", "[host]:port", "[v6]:port") replaces the MX
    lookup; it is spoken to with ``relay_tls`` and, when a user name is given, AUTH.
    ``ssl_context`` and ``verify`` apply to every TLS session; exchangers are reached with
    opportunistic STARTTLS, which does not verify unless ``verify`` is set. ``timeout``
    bounds each step (connect, each reply, each write), not the whole delivery.
    """

    __slots__ = (
        "_hostname",
        "_mx_port",
        "_relay",
        "_resolver",
        "_ssl_context",
        "_timeout",
        "_verify",
    )

    def __init__(
        self,
        *,
        hostname: str,
        resolver: dns.asyncresolver.Resolver | None,
        port: int = 25,
        relayhost: str | None = None,
        relay_tls: TLSMode = "opportunistic",
        relay_username: str | None = None,
        relay_password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        verify: bool = False,
        timeout: float = 300.0,
    ) -> None:
        if not hostname or any(c.isspace() or not c.isprintable() for c in hostname):
            raise ValueError(f"hostname must be a domain name for EHLO: {hostname!r}")
        if not 0 < port <= 65535:
            raise ValueError(f"port must be from 1 to 65535: {port}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive: {timeout}")
        if (relay_username is None) != (relay_password is None):
            raise ValueError("relay_username and relay_password go together")
        if relay_username is not None and relayhost is None:
            raise ValueError("relay credentials need a relayhost")
        self._hostname = hostname
        self._resolver = resolver
        self._mx_port = port
        self._ssl_context = ssl_context
        self._verify = verify
        self._timeout = timeout
        self._relay: _Target | None = None
        if relayhost is not None:
            host, relay_port = _parse_relayhost(relayhost, relay_tls)
            self._relay = _Target(host, relay_port, relay_tls, relay_username, relay_password)

    @property
    def hostname(self) -> str:
        return self._hostname

    def destination(self, domain: str) -> str:
        """Which connection carries mail for ``domain``: every domain shares the relayhost's,
        otherwise each domain has its own (the queue's per-destination lanes)."""
        if self._relay is not None:
            return f"[{self._relay.host}]:{self._relay.port}"
        return domain.rstrip(".").lower()

    def session(self, domain: str) -> SmtpSession:
        """A session to ``domain``'s exchanger (or the relayhost) for several messages::

            async with agent.session("remote.test") as session:
                first = await session.deliver(["a@remote.test"], envelope=e1, body=b1)
                second = await session.deliver(["b@remote.test"], envelope=e2, body=b2)

        The connection is made at the first delivery and kept (RSET between messages) until
        the block ends. A destination that cannot be reached is tried once per session."""
        return SmtpSession(self, domain)

    async def deliver(
        self, domain: str, recipients: Sequence[str], *, envelope: Envelope, body: bytes
    ) -> list[DeliveryResult]:
        """Deliver ``body`` (the message with CRLF line ends) from ``envelope.sender`` to
        ``recipients`` (all at ``domain``) in one transaction; one result per recipient, in
        order. Everything the network or the peer does wrong comes back as a result."""
        async with self.session(domain) as session:
            return await session.deliver(recipients, envelope=envelope, body=body)


class SmtpSession:
    """One destination, one connection at a time; made by ``SmtpAgent.session``.

    Deliveries in a session run one after another (a lock keeps them so). A connection that
    the server closed while idle is noticed at the next RSET and made again, once."""

    def __init__(self, agent: SmtpAgent, domain: str) -> None:
        self._agent = agent
        self.domain = domain.rstrip(".")
        self._client: SMTPClient | None = None
        self._conversation = _Conversation()
        self._where = ""  # "mx.remote.test[192.0.2.7]", for details
        self._failure: _Failure | None = None  # the destination is unreachable this session
        self._lock = asyncio.Lock()
        # REQUIRETLS (RFC 8689): the message being delivered asks for it; the connection
        # was made for it (verified TLS, REQUIRETLS offered); the failure above was found
        # while looking for such a connection.
        self._require_tls = False
        self._secure = False
        self._failure_secure = False
        # RFC 3461 requests of the message being delivered, passed on when the server
        # offers DSN: RET and ENVID, and NOTIFY and ORCPT per recipient address.
        self._dsn_mail: dict[str, str | None] = {}
        self._dsn_rcpt: dict[str, dict[str, str | None]] = {}

    async def __aenter__(self) -> SmtpSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close(abort=exc is not None)

    @property
    def transcript(self) -> Callable[[str, str], None]:
        """Where a client made for :meth:`adopt` reports what it sends and receives (the
        session reads each reply's command from it for its details)."""
        return self._conversation

    def adopt(self, client: SMTPClient, where: str) -> None:
        """Deliver over ``client``, connected by other means (a connection the remote side
        opened, as ATRN turns one around), made with ``transcript=self.transcript``;
        ``where`` names the peer in the details of results."""
        self._client, self._where = client, where

    async def close(self, *, abort: bool = False) -> None:
        """QUIT (or, with ``abort``, just drop) the connection, if there is one."""
        client, self._client = self._client, None
        self._secure = False
        if client is None:
            return
        if abort:
            await client.close(abort=True)
            return
        try:
            # Every result is known by now; a server slow to say goodbye only holds them up.
            await asyncio.wait_for(client.quit(), min(self._agent._timeout, _QUIT_TIMEOUT))
        except TimeoutError:
            await client.close(abort=True)

    async def deliver(
        self,
        recipients: Sequence[str],
        *,
        envelope: Envelope,
        body: bytes,
        positions: Sequence[int] | None = None,
    ) -> list[DeliveryResult]:
        """As ``SmtpAgent.deliver``, over this session's connection. ``positions`` are the
        recipients' places in ``envelope.recipients`` (for their RCPT parameters)."""
        async with self._lock:
            self._require_tls = _requires_tls(envelope)
            self._dsn_mail, self._dsn_rcpt = _dsn_parameters(envelope, recipients, positions)
            return await self._deliver(list(recipients), envelope.sender, body)

    async def _deliver(
        self, recipients: list[str], sender: str, body: bytes
    ) -> list[DeliveryResult]:
        results: list[DeliveryResult | None] = [None] * len(recipients)
        if sender and parse_mailbox(sender, utf8=True) is None:
            detail = f"sender address <{_printable(sender)}> cannot be sent over SMTP"
            return [_result(r, Outcome.FAILED, "5.1.7", detail) for r in recipients]
        to_send: list[int] = []
        for position, recipient in enumerate(recipients):
            if parse_mailbox(recipient, utf8=True) is None:
                detail = f"recipient address <{_printable(recipient)}> cannot be sent over SMTP"
                results[position] = _result(recipient, Outcome.FAILED, "5.1.3", detail)
            else:
                to_send.append(position)
        if to_send:
            batch = [recipients[p] for p in to_send]
            for position, result in zip(
                to_send, await self._send(batch, sender, body), strict=True
            ):
                results[position] = result
        return [r for r in results if r is not None]

    async def _send(self, recipients: list[str], sender: str, body: bytes) -> list[DeliveryResult]:
        try:
            return await self._send_once(recipients, sender, body)
        except Exception:
            # A bug here or in the client: the message stays queued and the log has it.
            _log.exception("smtp %s: delivery to %s failed", self._where, self.domain)
            await self.close(abort=True)
            detail = "internal error in the SMTP delivery agent (see the mail log)"
            return _Failure(Outcome.DEFERRED, "4.3.0", detail).results(recipients)

    async def _send_once(
        self, recipients: list[str], sender: str, body: bytes
    ) -> list[DeliveryResult]:
        for attempt in (1, 2):
            if self._failure is not None and self._failure_secure == self._require_tls:
                return self._failure.results(recipients)
            if self._client is not None and self._require_tls and not self._secure:
                await self.close()  # made without verifying: not good enough for this one
            reused = self._client is not None
            if self._client is None:
                self._failure = await self._connect()
                self._failure_secure = self._require_tls
                if self._failure is not None:
                    return self._failure.results(recipients)
            client = self._client
            assert client is not None
            try:
                return await self._transaction(client, recipients, sender, body)
            except SendError as error:
                await self.close(abort=True)
                if error.stage == "RSET" and reused and attempt == 1:
                    # The server hung up while the connection was idle: nothing of this
                    # message was sent, so a fresh connection may carry it.
                    _log.info("smtp %s: %s; connecting again", self._where, error)
                    continue
                return self._broken(error).results(recipients)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- one transaction ----------------------------------------------------------------------
    async def _transaction(
        self, client: SMTPClient, recipients: list[str], sender: str, body: bytes
    ) -> list[DeliveryResult]:
        results: list[DeliveryResult | None] = [None] * len(recipients)
        if "SMTPUTF8" not in client.extensions:
            # RFC 6531 section 3.5: an address that needs SMTPUTF8 cannot go to a server
            # without it, and the message is returned (Postfix: 5.6.7).
            detail = f"{self._where} does not support SMTPUTF8, which the address needs"
            if not sender.isascii():
                return [_result(r, Outcome.FAILED, "5.6.7", detail) for r in recipients]
            for position, recipient in enumerate(recipients):
                if not recipient.isascii():
                    results[position] = _result(recipient, Outcome.FAILED, "5.6.7", detail)
        positions = [p for p, r in enumerate(results) if r is None]
        if not positions:
            return [r for r in results if r is not None]
        batch = [recipients[p] for p in positions]
        mark = self._conversation.mark()
        dsn = "DSN" in client.extensions and bool(self._dsn_mail or self._dsn_rcpt)
        sent = await client.send(
            body,
            sender=sender,
            recipients=batch,
            requiretls=self._require_tls,
            mail_parameters=self._dsn_mail if dsn else None,
            recipient_parameters=[self._dsn_rcpt.get(r, {}) for r in batch] if dsn else None,
        )
        exchange = self._conversation.transaction(mark)
        host = self._where.partition("[")[0]
        for index, (position, answer) in enumerate(zip(positions, sent.recipients, strict=True)):
            result = self._judge(answer, exchange, index)
            # The next hop took NOTIFY along: success reports are its to send now.
            passed_on = dsn and "NOTIFY" in self._dsn_rcpt.get(answer.recipient, {})
            results[position] = replace(result, remote_mta=host, dsn_passed_on=passed_on)
        return [r for r in results if r is not None]

    def _judge(self, answer: RecipientResult, exchange: _Exchange, index: int) -> DeliveryResult:
        """Map one recipient's reply to a result, naming the command it answered."""
        recipient, code = answer.recipient, answer.code
        text = _printable(answer.text)
        said = f"{code} {answer.status} {text}" if answer.status else f"{code} {text}"
        if exchange.mail is None:  # refused before MAIL: the client's own SIZE check
            local = _outcome(code) or Outcome.DEFERRED
            status = _status(code, answer.status)
            return _result(recipient, local, status, f"{self._where}: {text}")
        command = exchange.command_for(index)
        detail = f"{self._where} said: {said}{_in_reply_to(command)}"
        if answer.accepted and command != ".":
            # A 2xx where the end of DATA should have answered (DATA answered 250, MAIL
            # answered 251): the server never received the message, so it is not delivered.
            detail += " without receiving the message"
            return _result(recipient, Outcome.DEFERRED, "4.5.0", detail)
        outcome = _outcome(code)
        if outcome is None:  # a 3xx where a final answer belongs
            return _result(recipient, Outcome.DEFERRED, "4.5.0", f"{detail}: not a valid reply")
        return _result(recipient, outcome, _status(code, answer.status), detail)

    def _broken(self, error: SendError) -> _Failure:
        """The session broke mid-transaction: defer, saying where and why."""
        when = f"at {error.stage}"
        if self._conversation.awaiting_final:
            # As Postfix says it: the server may have taken the message before it failed.
            when += " while sending end of data (the message may be delivered twice)"
        detail = f"conversation with {self._where} failed {when}: {_printable(error.message)}"
        _log.info("smtp %s: %s", self._where, detail)
        return _Failure(Outcome.DEFERRED, "4.4.2", detail)

    # -- finding a server ---------------------------------------------------------------------
    async def _connect(self) -> _Failure | None:
        """Open a session to the first exchanger (or relay address) that gives one, or say
        why none did."""
        agent = self._agent
        relay = agent._relay
        if relay is not None:
            return await self._connect_relay(relay)
        domain = self.domain
        literal = _domain_literal(domain)
        if literal is not None:
            if self._require_tls:
                detail = f"REQUIRETLS: {domain} is an address, with no DNSSEC-validated MX"
                return _Failure(Outcome.FAILED, "5.7.30", detail)
            exchangers = [MailExchanger(literal, 0)]
        elif agent._resolver is None:
            return _Failure(
                Outcome.DEFERRED,
                "4.3.5",
                f"cannot look up the mail exchangers of {domain}: no DNS resolver configured",
            )
        else:
            try:
                if self._require_tls:
                    # RFC 8689 section 4.2.1: REQUIRETLS mail goes only to exchangers named
                    # by DNSSEC-validated MX records (the certificate is then checked
                    # against that name), else it is returned.
                    exchangers, authentic = await resolve_mx_authenticated(
                        domain, authenticating(agent._resolver)
                    )
                    if not authentic:
                        detail = (
                            f"REQUIRETLS: the MX records of {domain} are not DNSSEC-validated"
                            " (the resolver did not set the AD flag)"
                        )
                        return _Failure(Outcome.FAILED, "5.7.30", detail)
                else:
                    exchangers = await resolve_mx(domain, agent._resolver)
            except MXError as error:
                outcome = Outcome.FAILED if error.permanent else Outcome.DEFERRED
                return _Failure(outcome, error.status, str(error))
        implicit = literal is None and [(x.host.lower(), x.preference) for x in exchangers] == [
            (domain.lower(), 0)
        ]
        exchangers = self._without_myself(exchangers)
        if not exchangers:
            return _Failure(
                Outcome.FAILED,
                "5.4.6",
                f"mail for {domain} loops back to myself ({agent._hostname} is its best MX)",
            )
        last: _Failure | None = None
        temporary_lookup: _Lookup | None = None
        unresolved: list[str] = []
        for exchanger in exchangers:
            lookup = await self._addresses(exchanger.host)
            if not lookup.addresses:
                if lookup.temporary:
                    temporary_lookup = lookup
                else:
                    unresolved.append(lookup.problem)
                continue
            target = _Target(exchanger.host, agent._mx_port, "opportunistic")
            for address in lookup.addresses:
                failure = await self._try(target, address)
                if failure is None:
                    return None
                last = failure
        if last is not None:
            return _Failure(
                Outcome.DEFERRED,
                last.status,
                f"no mail exchanger of {domain} took the connection; last error: {last.detail}",
            )
        if temporary_lookup is not None:
            return _Failure(Outcome.DEFERRED, temporary_lookup.status, temporary_lookup.problem)
        if implicit:
            detail = f"domain {domain} has no mail exchanger (MX) and no address (A/AAAA)"
        else:
            detail = f"no mail exchanger of {domain} has an address: " + "; ".join(unresolved)
        return _Failure(Outcome.FAILED, "5.4.4", detail)

    async def _connect_relay(self, relay: _Target) -> _Failure | None:
        lookup = await self._addresses(relay.host)
        if not lookup.addresses:
            # Our own configuration is wrong or the DNS is down: wait for a fix, never bounce.
            status = lookup.status if lookup.temporary else "4.4.4"
            return _Failure(Outcome.DEFERRED, status, f"relayhost {lookup.problem}")
        last: _Failure | None = None
        for address in lookup.addresses:
            failure = await self._try(relay, address)
            if failure is None:
                return None
            last = failure
        assert last is not None
        return _Failure(
            Outcome.DEFERRED,
            last.status,
            f"no session with relayhost {relay.host}:{relay.port}: {last.detail}",
        )

    def _without_myself(self, exchangers: list[MailExchanger]) -> list[MailExchanger]:
        """RFC 5321 section 5.1: when this host is in the list, only better ones may be used."""
        me = self._agent._hostname.lower().rstrip(".")
        mine = [x.preference for x in exchangers if x.host.lower().rstrip(".") == me]
        if not mine:
            return exchangers
        return [x for x in exchangers if x.preference < min(mine)]

    async def _addresses(self, host: str) -> _Lookup:
        """IPv6 then IPv4 addresses of ``host``, telling "none exist" from "DNS failed"."""
        try:
            return _Lookup([str(ipaddress.ip_address(host))])
        except ValueError:
            pass
        if host.lower() == "localhost":
            return _Lookup(list(_LOCALHOST))
        resolver = self._agent._resolver
        if resolver is None:
            return _Lookup([], f"{host}: no DNS resolver configured to look it up", "4.3.5")
        addresses: list[str] = []
        failure = ""
        for rdtype in ("AAAA", "A"):
            try:
                answer = await resolver.resolve(host, rdtype)
            except dns.resolver.NXDOMAIN:
                return _Lookup([], f"{host}: host not found (NXDOMAIN)", "5.4.4")
            except dns.resolver.NoAnswer:
                continue
            except dns.exception.DNSException as error:
                failure = f"{host}: DNS lookup of {rdtype} failed: {error}"
                continue
            addresses.extend(str(record) for record in answer)
        if addresses:
            return _Lookup(addresses)
        if failure:
            return _Lookup([], failure, "4.4.3")
        return _Lookup([], f"{host}: no address (A/AAAA) records", "5.4.4")

    async def _try(
        self, target: _Target, address: str, tls: TLSMode | None = None
    ) -> _Failure | None:
        """Connect to ``address``; on success the session keeps the client."""
        agent = self._agent
        tls = tls or target.tls
        secure = self._require_tls
        if secure and tls in ("opportunistic", "off"):
            # RFC 8689 section 4.2.1: TLS, with the certificate verified, or no delivery.
            tls = "starttls"
        conversation = _Conversation()
        client = SMTPClient(
            target.host,
            target.port,
            tls=tls,
            ssl_context=agent._ssl_context,
            verify=agent._verify or secure,
            username=target.username,
            password=target.password,
            local_hostname=agent._hostname,
            timeout=agent._timeout,
            connect_to=address,
            transcript=conversation,
        )
        where = f"{target.host}[{address}]"
        try:
            await client.connect()  # closes the connection itself when it fails
        except SendError as error:
            _log.info("smtp %s: %s", where, error)
            if isinstance(error, TLSError) and tls == "opportunistic":
                # Opportunistic TLS: a server whose TLS is broken still gets the mail, in
                # plain text, on a new connection (the old one is in an unknown state).
                return await self._try(target, address, "off")
            failure = _connect_failure(client, error, tls)
            if secure and isinstance(error, TLSError):
                return _no_requiretls(f"{where}: {failure.detail}")
            return failure
        if secure and "REQUIRETLS" not in client.extensions:
            await client.quit()
            return _no_requiretls(f"{where} does not offer REQUIRETLS")
        self._client, self._conversation, self._where = client, conversation, where
        self._secure = secure
        return None


def _requires_tls(envelope: Envelope) -> bool:
    return any(keyword == "REQUIRETLS" for keyword, _value in envelope.mail_parameters)


def _no_requiretls(detail: str) -> _Failure:
    """A peer that cannot take a REQUIRETLS message: try again later, and at the end of the
    queue lifetime return it (RFC 8689 section 4.2.1; 5.7.30 is "REQUIRETLS support
    required", section 6)."""
    return _Failure(Outcome.DEFERRED, "4.7.30", f"REQUIRETLS: {detail}")


def _connect_failure(client: SMTPClient, error: SendError, tls: TLSMode) -> _Failure:
    """What a failed attempt at a session means (every one is temporary)."""
    detail = _printable(str(error))
    if isinstance(error, TLSError):
        offered = "STARTTLS" in client.extensions or tls == "implicit"
        return _Failure(Outcome.DEFERRED, "4.7.5" if offered else "4.7.4", detail)
    if isinstance(error, AuthError):
        return _Failure(Outcome.DEFERRED, "4.7.0", detail)
    greeting = client.greeting
    if error.stage == "greeting" and greeting is not None and greeting.code != 220:
        # A refusal at the greeting, even a 5xx, only says "not this server" (RFC 5321
        # section 3.1 lets a client try the next one); what it says becomes a 4.x.x.
        status = greeting.status or "4.4.1"
        return _Failure(Outcome.DEFERRED, "4" + status[1:], detail)
    return _Failure(Outcome.DEFERRED, "4.4.1", detail)


# -- which reply answered which command ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Exchange:
    """The reply codes of one transaction, by command (None: that command was not sent)."""

    mail: int | None
    rcpts: tuple[int, ...]
    data: int | None
    final: int | None

    def command_for(self, index: int) -> str:
        """The command whose reply decided the recipient at ``index``."""
        if self.mail != 250:  # as the client decides: any other code refuses them all
            return "MAIL"
        if index < len(self.rcpts) and not 200 <= self.rcpts[index] < 300:
            return "RCPT"
        if self.data is not None and self.data != 354:
            return "DATA"
        return "." if self.final is not None else ""


class _Conversation:
    """Pairs each reply with the command it answers, from the client's transcript.

    The client reports every line it sends and receives (``SMTPClient(transcript=...)``);
    replies come back in the order of the commands, pipelined or not, so a queue of the
    commands sent is enough. The message text after a 354 is skipped up to its final dot,
    which itself is a command: its reply is the end-of-DATA one."""

    __slots__ = ("_in_text", "_pending", "_replies")

    def __init__(self) -> None:
        self._pending: deque[str] = deque()
        self._replies: list[tuple[str, int]] = []
        self._in_text = False

    def __call__(self, direction: str, line: str) -> None:
        if direction == ">":
            if self._in_text:
                if line == ".":
                    self._in_text = False
                    self._pending.append(".")
                return
            self._pending.append(line.split(" ", 1)[0].upper())
            return
        if len(line) > 3 and line[3] == "-":
            return  # not the last line of its reply
        command = self._pending.popleft() if self._pending else "greeting"
        code = int(line[:3]) if line[:3].isdigit() else 0
        self._replies.append((command, code))
        if command == "DATA" and code == 354:
            self._in_text = True

    def mark(self) -> int:
        return len(self._replies)

    @property
    def awaiting_final(self) -> bool:
        """The final dot was sent and its reply has not come."""
        return "." in self._pending

    def transaction(self, mark: int) -> _Exchange:
        codes: dict[str, int] = {}
        rcpts: list[int] = []
        for command, code in self._replies[mark:]:
            if command == "RCPT":
                rcpts.append(code)
            elif command in ("MAIL", "DATA", "."):
                codes.setdefault(command, code)
        return _Exchange(codes.get("MAIL"), tuple(rcpts), codes.get("DATA"), codes.get("."))


# -- small helpers ------------------------------------------------------------------------------
def _parse_relayhost(relayhost: str, tls: TLSMode) -> tuple[str, int]:
    text = relayhost.strip()
    if not text or text.startswith(":"):
        raise ValueError(f"relayhost must name a host: {relayhost!r}")
    try:
        host, port = parse_host_port(text, default_port=465 if tls == "implicit" else 25)
    except ConfigError as error:
        raise ValueError(f"relayhost: {error}") from None
    if not host or not 0 < port <= 65535:
        raise ValueError(f"relayhost must be host:port with a port from 1 to 65535: {text!r}")
    return host, port


def _domain_literal(domain: str) -> str | None:
    """The address in ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``, or None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    literal = domain[1:-1]
    if literal.upper().startswith("IPV6:"):
        literal = literal[5:]
    try:
        return str(ipaddress.ip_address(literal))
    except ValueError:
        return None


def _in_reply_to(command: str) -> str:
    name = _COMMAND_NAMES.get(command)
    return f" (in reply to {name} command)" if name else ""


def _outcome(code: int) -> Outcome | None:
    if 200 <= code < 300:
        return Outcome.DELIVERED
    if 400 <= code < 500:
        return Outcome.DEFERRED
    if 500 <= code < 600:
        return Outcome.FAILED
    return None


def _status(code: int, status: str | None) -> str:
    """The reply's own enhanced status code, else the one its class implies."""
    if status is not None and status[0] == str(code)[0]:
        return status
    return f"{code // 100}.0.0" if code // 100 in (2, 4, 5) else "4.5.0"


def _printable(text: str) -> str:
    """Remote text made safe for a log line and a bounce: no control characters, bounded."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    if len(cleaned) > _MAX_REPLY_TEXT:
        cleaned = cleaned[: _MAX_REPLY_TEXT - 3] + "..."
    return cleaned


def _dsn_parameters(
    envelope: Envelope, recipients: Sequence[str], positions: Sequence[int] | None
) -> tuple[dict[str, str | None], dict[str, dict[str, str | None]]]:
    """The RFC 3461 parameters to pass on: RET and ENVID of MAIL, NOTIFY and ORCPT of each
    recipient (by address), as they were received (ENVID and ORCPT stay in xtext)."""
    mail = {k: v for k, v in envelope.mail_parameters if k in ("RET", "ENVID")}
    rcpt: dict[str, dict[str, str | None]] = {}
    if positions is not None:
        for recipient, position in zip(recipients, positions, strict=True):
            wanted: dict[str, str | None] = {
                key: value
                for key in ("NOTIFY", "ORCPT")
                if (value := envelope.recipient_parameter(position, key)) is not None
            }
            if wanted:
                rcpt[recipient] = wanted
    return mail, rcpt


def _result(recipient: str, outcome: Outcome, status: str, detail: str) -> DeliveryResult:
    return DeliveryResult(recipient=recipient, outcome=outcome, status=status, detail=detail)
