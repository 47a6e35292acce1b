"""On-demand mail relay (RFC 2645): ATRN, and TURN made safe by authentication.

Domains of ``[odmr]`` are held: their mail is accepted from anyone and waits in the queue
(recipient state ``held``, see ``held_router``) instead of going to their exchangers. An
authenticated owner of such a domain sends ``ATRN [domain,...]`` (or TURN, for all of their
domains); after ``250`` the roles reverse on the same connection (section 5.3): the client
greets, and this session, now the SMTP client, delivers the held mail, then says QUIT.

The held mail may belong to any worker process. The session reads each message from the
spool's segment files (read-only, as ``pigeon queue show`` does), delivers it, and leaves the
per-recipient results in the queue index for the owning worker, which it rings: that worker
records them as its own attempts (delivered; deferred, to be held again after the retry
delay; failed, with a bounce). A lock file per domain keeps two sessions from fetching the
same mail at once; a recipient with a report not yet recorded is not sent again.

TURN without authentication never reverses the connection (RFC 5321 section 4.1.1): it gets
502, as does TURN from a user who owns no held domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING

from pigeon.client import SendError, SMTPClient
from pigeon.config import OdmrConfig
from pigeon.delivery.result import DeliveryResult, Outcome
from pigeon.delivery.smtp import SmtpAgent, SmtpSession, _Failure
from pigeon.log import event
from pigeon.queue.control import ring
from pigeon.queue.index import (
    DeliveryReport,
    IndexedMessage,
    QueueIndex,
    QueueIndexError,
    RecipientState,
)
from pigeon.queue.routing import Held, Route, Router
from pigeon.smtp import Reply, Turn, replies

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["OnDemandRelay", "held_router"]

_TIMEOUT = 120.0  # seconds for each step of the reversed conversation


def held_router(router: Router, odmr: Mapping[str, OdmrConfig]) -> Router:
    """``router``, with the recipients of held domains kept in the queue."""
    held = frozenset(odmr)

    def route(recipient: str, direct: bool) -> Route:
        found = router(recipient, direct)
        if found is None and recipient.rpartition("@")[2].lower() in held:
            domain = recipient.rpartition("@")[2].lower()
            return Held(f"held for on-demand relay: waiting for an owner of {domain} to ATRN")
        return found

    return route


class _ReversedSession(SmtpSession):
    """The outbound agent's session over a connection the client opened: when it breaks,
    there is no exchanger to try instead (the mail waits for the next ATRN)."""

    async def _connect(self) -> _Failure | None:
        return _Failure(
            Outcome.DEFERRED, "4.4.2", "the ATRN connection ended; the mail waits for the next"
        )


class OnDemandRelay:
    """One TURN or ATRN of one session: ``prepare`` decides the reply; after a 250,
    ``deliver`` turns the connection around; ``release`` always ends it."""

    def __init__(self, context: ServerContext, user: str | None, *, session: str) -> None:
        self._context = context
        self._user = user
        self._session = session
        self._locks: list[IO[bytes]] = []
        self._held: list[tuple[IndexedMessage, list[int]]] = []
        self._domains: tuple[str, ...] = ()

    async def prepare(self, request: Turn) -> Reply:
        odmr = self._context.config.odmr
        user = self._user
        owned = sorted(d for d, c in odmr.items() if user is not None and user in c.owners)
        if request.verb == "TURN" and (user is None or not owned):
            # RFC 5321 4.1.1: TURN from anyone would hand this server's mail to whoever asks.
            return replies.NOT_IMPLEMENTED
        if user is None:
            return replies.AUTH_REQUIRED  # RFC 2645 section 4 (the core checks this first)
        wanted = request.domains or tuple(owned)
        refused = [d for d in wanted if d not in owned]
        if not wanted or refused:
            shown = ", ".join(refused) or "none"
            event("atrn_refused", session=self._session, user=user, domains=shown)
            return Reply.of(450, f"ATRN request refused: {user} may not fetch {shown}", "4.7.1")
        try:
            self._lock(wanted)
        except BlockingIOError:
            return Reply.of(451, "Unable to process ATRN request now: fetched already", "4.3.0")
        except OSError as error:
            event("atrn_failed", session=self._session, reason=str(error))
            return Reply.of(451, "Unable to process ATRN request now", "4.3.0")
        try:
            # This worker's latest held mail may still wait for its batch; another worker's
            # reaches the index within 50 ms of its 250.
            await self._context.scheduler.flush_index()
            self._held = await asyncio.to_thread(self._find_held, wanted)
        except (QueueIndexError, OSError) as error:
            event("atrn_failed", session=self._session, reason=str(error))
            return Reply.of(451, "Unable to process ATRN request now", "4.3.0")
        if not self._held:
            return Reply.of(453, "You have no mail", "4.3.2")
        self._domains = tuple(wanted)
        return Reply.of(250, "OK now reversing the connection", "2.0.0")

    def _lock(self, domains: tuple[str, ...]) -> None:
        directory = self._context.config.data_dir / "odmr"
        directory.mkdir(mode=0o700, exist_ok=True)
        for domain in sorted(domains):
            file = (directory / f"{domain}.lock").open("ab")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                file.close()
                raise
            self._locks.append(file)

    def release(self) -> None:
        for file in self._locks:
            with contextlib.suppress(OSError):
                fcntl.flock(file, fcntl.LOCK_UN)
            file.close()
        self._locks = []

    def _find_held(self, domains: tuple[str, ...]) -> list[tuple[IndexedMessage, list[int]]]:
        path = self._context.config.queue_index
        if not path.exists():
            return []
        wanted = set(domains)
        with QueueIndex(path, readonly=True) as index:
            reported = index.reported()
            found = []
            for message in index.messages():
                if message.done:
                    continue
                positions = [
                    r.position
                    for r in message.recipients
                    if r.state is RecipientState.HELD
                    and r.domain in wanted
                    and (message.queue_id, r.position) not in reported
                ]
                if positions:
                    found.append((message, positions))
        return found

    # -- the reversed connection -------------------------------------------------------------
    async def deliver(self, transport: asyncio.Transport, *, client: str) -> None:
        """Be the SMTP client on ``transport`` (the client greets first), deliver the held
        mail, QUIT, and leave the results for the owning workers."""
        config = self._context.config
        reader, writer = _reverse(transport)
        agent = SmtpAgent(hostname=config.hostname, resolver=None, timeout=_TIMEOUT)
        session = _ReversedSession(agent, self._domains[0])
        smtp = SMTPClient(
            client,
            0,
            tls="off",
            local_hostname=config.hostname,
            timeout=_TIMEOUT,
            transcript=session.transcript,
        )
        where = f"[{client}] (ATRN by {self._user})"
        reports: list[DeliveryReport] = []
        try:
            try:
                await smtp.take_over(reader, writer)
            except SendError as error:
                event("atrn_failed", session=self._session, reason=str(error))
                return
            session.adopt(smtp, where)
            for message, positions in self._held:
                body = await asyncio.to_thread(self._read_body, message)
                recipients = [message.envelope.recipients[p] for p in positions]
                results = await session.deliver(
                    recipients, envelope=message.envelope, body=body, positions=positions
                )
                reports += [
                    _report(message.queue_id, p, r) for p, r in zip(positions, results, strict=True)
                ]
            await session.close()
        finally:
            with contextlib.suppress(Exception):
                await smtp.close(abort=True)
            if reports:
                await asyncio.to_thread(self._leave_reports, reports)
            delivered = sum(r.outcome == Outcome.DELIVERED.value for r in reports)
            event(
                "atrn",
                session=self._session,
                user=self._user,
                domains=",".join(self._domains),
                recipients=len(reports),
                delivered=delivered,
            )

    def _read_body(self, message: IndexedMessage) -> bytes:
        path = self._context.config.spool_dir / "segments" / message.segment
        with path.open("rb") as file:
            file.seek(message.body_offset)
            return file.read(message.size)

    def _leave_reports(self, reports: list[DeliveryReport]) -> None:
        data_dir = self._context.config.data_dir
        with QueueIndex(self._context.config.queue_index) as index:
            owners = index.add_reports(reports)
        for owner in owners:
            ring(data_dir, owner, timeout=_TIMEOUT)


def _reverse(transport: asyncio.Transport) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over a transport whose protocol was the SMTP session until now."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    with contextlib.suppress(RuntimeError):
        transport.resume_reading()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


def _report(queue_id: str, position: int, result: DeliveryResult) -> DeliveryReport:
    return DeliveryReport(
        queue_id, position, result.outcome.value, result.status, result.detail, result.remote_mta
    )
