"""The scheduler: takes stored messages to their delivery agents, and tries again later.

Retries follow Postfix's defaults: the first after 5 minutes, then doubling up to an hour
between tries; a recipient still failing temporarily after the queue lifetime (5 days) fails
for good and is bounced, and the sender gets one delay warning after 4 hours. The clock is a
parameter, so tests can make days pass at once.

This is the first part of the queue manager: it delivers every recipient of every stored
message, bounds how many deliveries run at once, and retries temporary failures with a
growing delay. Blocking agents (Maildir writes and fsyncs) run in worker threads, so the
event loop keeps serving SMTP sessions meanwhile.

Delivery is idempotent (each recipient's copy has a name derived from the queue id), so a
message that was being delivered when the process died is simply delivered again on start
without making a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pigeon.bounce import Action, RecipientStatus, build_dsn
from pigeon.delivery.result import DeliveryResult, MaildirItem, Outcome
from pigeon.log import event

from .envelope import Envelope
from .spool import BodyReader, Spool, SpooledMessage

__all__ = ["Scheduler"]

MaildirFinder = Callable[[str], Path | None]

# A bounce carries the whole original up to this size, and only its header beyond.
_RETURN_WHOLE_LIMIT = 1 << 20


class LocalAgent(Protocol):
    """What the scheduler needs of a local delivery agent (``pigeon.delivery.MaildirAgent``).

    The queue names the interface instead of importing the agent: agents are given to it, so
    ``pigeon.delivery`` may use the queue's data types without an import cycle."""

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]: ...

    def sync_new_dirs(self, maildirs: Iterable[Path]) -> dict[Path, DeliveryResult | None]: ...


@dataclass(slots=True)
class _Job:
    message: SpooledMessage
    spool: Spool  # the spool that holds the message (a worker may adopt others' spools)
    pending: list[int]  # indexes into envelope.recipients still to deliver
    recovered: bool
    attempts: int = 0
    held: list[int] = field(default_factory=list)
    failed: list[DeliveryResult] = field(default_factory=list)  # not yet bounced
    delayed: list[DeliveryResult] = field(default_factory=list)  # to warn the sender about
    warned: bool = False  # a delay warning goes out once per message


class RemoteAgent(Protocol):
    """What the scheduler needs of the outbound agent (``pigeon.delivery.smtp.SmtpAgent``)."""

    async def deliver(
        self, domain: str, recipients: Sequence[str], *, envelope: Envelope, body: bytes
    ) -> list[DeliveryResult]: ...


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        *,
        local_agent: LocalAgent,
        find_maildir: MaildirFinder,
        remote_agent: RemoteAgent | None = None,
        concurrency: int = 4,
        retry_base: float = 300.0,
        retry_max: float = 3600.0,
        max_lifetime: float = 5 * 86400.0,
        delay_warning: float = 4 * 3600.0,
        clock: Callable[[], float] = time.time,
        batch_size: int = 64,
        reporting_mta: str = "localhost",
        postmaster: str | None = None,
    ) -> None:
        self._spool = spool
        self._agent = local_agent
        self._find_maildir = find_maildir
        self._remote = remote_agent
        self._concurrency = concurrency
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._batch_size = batch_size
        self._max_lifetime = max_lifetime
        self._delay_warning = delay_warning
        self._clock = clock
        self._reporting_mta = reporting_mta
        self._postmaster = postmaster
        self._jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._retries: set[asyncio.TimerHandle] = set()
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"delivery-{n}")
            for n in range(self._concurrency)
        ]

    def submit(
        self, message: SpooledMessage, *, recovered: bool = False, spool: Spool | None = None
    ) -> None:
        pending = list(range(len(message.envelope.recipients)))
        self._enqueue(_Job(message, spool or self._spool, pending, recovered))

    @property
    def backlog(self) -> int:
        return self._jobs.qsize() + self._active

    async def wait_idle(self) -> None:
        """Until nothing is queued or being delivered (retries waiting do not count)."""
        while self.backlog:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Let deliveries under way finish; what is still queued stays in the spool."""
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        while not self._jobs.empty():
            self._jobs.get_nowait()
        while self._active:
            self._idle.clear()
            await self._idle.wait()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []

    def _enqueue(self, job: _Job) -> None:
        self._idle.clear()
        self._jobs.put_nowait(job)

    async def _work(self) -> None:
        while True:
            batch = [await self._jobs.get()]
            # Whatever else is waiting goes along: one trip to a worker thread, one fsync
            # of each Maildir's new/, one done-list append for the lot.
            while len(batch) < self._batch_size and not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            self._active += len(batch)
            try:
                await self._run(batch)
            finally:
                self._active -= len(batch)
                if not self.backlog:
                    self._idle.set()

    async def _run(self, batch: list[_Job]) -> None:
        for job in batch:
            job.attempts += 1
        outcomes = await asyncio.to_thread(self._deliver, batch)
        if self._remote is not None:
            for job, results in zip(batch, outcomes, strict=True):
                results.extend(await self._deliver_remote(job, self._remote))
        finished: dict[int, tuple[Spool, list[SpooledMessage]]] = {}
        for job, results in zip(batch, outcomes, strict=True):
            done = self._record(job, results)
            if job.failed:
                # The bounce is stored before the message is marked done: a crash between
                # the two gives a second bounce at worst, never none.
                await self._bounce(job)
            if job.delayed:
                await self._bounce(job, warning=True)
            if done:
                finished.setdefault(id(job.spool), (job.spool, []))[1].append(job.message)
        for spool, messages in finished.values():
            await spool.mark_done_many(messages)

    def _record(self, job: _Job, results: list[tuple[int, DeliveryResult]]) -> bool:
        """Log each result and schedule retries; True when the message needs no more work."""
        message = job.message
        envelope = message.envelope
        deferred: list[int] = []
        delay = f"{max(0.0, time.time() - envelope.received_at):.3f}"
        for index, result in results:
            fields = {
                "queue_id": message.queue_id,
                "to": f"<{result.recipient}>",
                "status": result.status,
                "detail": result.detail,
                "delay": delay,
            }
            if result.outcome is Outcome.DELIVERED:
                event("delivered", **fields)
            elif result.outcome is Outcome.DEFERRED:
                deferred.append(index)
                event("deferred", attempt=job.attempts, **fields)
            else:
                job.failed.append(result)
                event("failed", **fields)
        job.pending = deferred
        if deferred:
            age = self._clock() - envelope.received_at
            if age >= self._max_lifetime:
                # Given up after the queue lifetime (Postfix's maximal_queue_lifetime): the
                # last temporary failure becomes permanent, and the sender is told why.
                for index, result in results:
                    if index in deferred:
                        expired = DeliveryResult(
                            result.recipient,
                            Outcome.FAILED,
                            "5.4.7",
                            f"delivery time expired after {age / 86400:.1f} days;"
                            f" last error: {result.detail}",
                        )
                        job.failed.append(expired)
                        event("expired", queue_id=message.queue_id, to=f"<{result.recipient}>")
                job.pending = []
                return not job.held
            if age >= self._delay_warning and not job.warned:
                job.warned = True
                job.delayed = [r for i, r in results if i in deferred]
            retry_in = min(self._retry_max, self._retry_base * 2 ** (job.attempts - 1))
            loop = asyncio.get_running_loop()
            handle: asyncio.TimerHandle

            def retry() -> None:
                self._retries.discard(handle)
                self._enqueue(job)

            handle = loop.call_later(retry_in, retry)
            self._retries.add(handle)
            return False
        return not job.held

    async def _bounce(self, job: _Job, *, warning: bool = False) -> None:
        """Tell the sender, in one RFC 3464 report, about every recipient that failed (or,
        with ``warning``, that is still being retried after ``delay_warning``)."""
        if warning:
            reported, job.delayed = job.delayed, []
            action = Action.DELAYED
        else:
            reported, job.failed = job.failed, []
            action = Action.FAILED
        message = job.message
        envelope = message.envelope
        to = envelope.sender
        if not to and warning:
            return  # nobody to warn about a bounce that is late
        if not to:
            # A bounce never bounces (RFC 5321 section 6.1): the failure of a message with
            # the null sender goes to the postmaster, and a failure of that is only logged.
            if self._postmaster is None or self._postmaster in envelope.recipients:
                event("bounce_dropped", queue_id=message.queue_id, reason="double bounce")
                return
            to = self._postmaster
        original = await asyncio.to_thread(self._read_original, job)
        report = build_dsn(
            reporting_mta=self._reporting_mta,
            sender=to,
            original=original,
            arrival=envelope.received_at,
            recipients=[
                RecipientStatus(
                    r.recipient,
                    action,
                    r.status,
                    r.detail,
                    will_retry_until=(
                        envelope.received_at + self._max_lifetime if warning else None
                    ),
                )
                for r in reported
            ],
            queue_id=message.queue_id,
            headers_only=message.size > _RETURN_WHOLE_LIMIT,
        )
        writer = self._spool.new_message()
        writer.write(report)
        bounce_envelope = Envelope(sender="", recipients=(to,), received_at=time.time())
        stored = await self._spool.commit(writer, bounce_envelope)
        event("bounce", queue_id=message.queue_id, bounce_id=stored.queue_id, to=f"<{to}>")
        self.submit(stored)

    @staticmethod
    def _read_original(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return body.read(_RETURN_WHOLE_LIMIT + 1) or b""

    def _deliver(self, batch: list[_Job]) -> list[list[tuple[int, DeliveryResult]]]:
        """Runs in a worker thread: every pending recipient of the batch in one call to the
        agent, then one sync of each Maildir written to; a failed sync turns its deliveries
        into deferrals."""
        items: list[MaildirItem] = []
        slots: list[tuple[int, int, Path]] = []  # (position in batch, recipient index, maildir)
        readers: list[BodyReader] = []
        try:
            for position, job in enumerate(batch):
                for index in self._local_recipients(job):
                    recipient = job.message.envelope.recipients[index]
                    maildir = self._find_maildir(recipient)
                    assert maildir is not None
                    body = job.spool.open_body(job.message)
                    readers.append(body)
                    items.append(
                        MaildirItem(
                            maildir,
                            body,
                            recipient,
                            job.message.envelope,
                            f"{job.message.queue_id}_{index}",
                            # After a restart the copy may exist already, even read and moved
                            # to cur/.
                            check_existing=job.recovered or job.attempts > 1,
                        )
                    )
                    slots.append((position, index, maildir))
            results = self._agent.deliver_many(items) if items else []
        finally:
            for reader in readers:
                reader.close()
        written = {
            maildir
            for (_, _, maildir), r in zip(slots, results, strict=True)
            if r.outcome is Outcome.DELIVERED
        }
        failures = self._agent.sync_new_dirs(sorted(written))
        outcomes: list[list[tuple[int, DeliveryResult]]] = [[] for _ in batch]
        for (position, index, maildir), result in zip(slots, results, strict=True):
            failure = failures.get(maildir)
            if failure is not None and result.outcome is Outcome.DELIVERED:
                # Written, but its name in new/ may not survive a power cut: try again.
                outcome = DeliveryResult(
                    result.recipient, failure.outcome, failure.status, failure.detail
                )
                outcomes[position].append((index, outcome))
            else:
                outcomes[position].append((index, result))
        return outcomes

    async def _deliver_remote(
        self, job: _Job, agent: RemoteAgent
    ) -> list[tuple[int, DeliveryResult]]:
        """The recipients at other domains, one transaction per domain (several RCPTs)."""
        message = job.message
        recipients = message.envelope.recipients
        by_domain: dict[str, list[int]] = {}
        for index in job.pending:
            if self._find_maildir(recipients[index]) is None:
                domain = recipients[index].rpartition("@")[2].lower()
                by_domain.setdefault(domain, []).append(index)
        if not by_domain:
            return []
        body = await asyncio.to_thread(self._read_body, job)
        results: list[tuple[int, DeliveryResult]] = []
        for domain, indexes in by_domain.items():
            answers = await agent.deliver(
                domain, [recipients[i] for i in indexes], envelope=message.envelope, body=body
            )
            results.extend(zip(indexes, answers, strict=True))
        return results

    @staticmethod
    def _read_body(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return body.read() or b""

    def _local_recipients(self, job: _Job) -> list[int]:
        """The pending recipients that have a Maildir here; the others go to the remote
        agent, or are held when there is none."""
        message = job.message
        local = []
        for index in job.pending:
            recipient = message.envelope.recipients[index]
            if self._find_maildir(recipient) is not None:
                local.append(index)
            elif self._remote is None and index not in job.held:
                # A remote recipient and no outbound agent (a scheduler built for local
                # delivery only): the message waits in the spool.
                job.held.append(index)
                event(
                    "held",
                    queue_id=message.queue_id,
                    to=f"<{recipient}>",
                    detail="no transport for remote domains; kept in the spool",
                )
        return local
