"""The scheduler: takes stored messages to their delivery agents, and tries again later.

Every recipient of every message has a state in the queue index (``pigeon.queue.index``):
queued, deferred (until a time), held, delivered or failed. An *attempt* takes a message's
pending recipients and splits them by route:

* local recipients (a Maildir here) go to the local lane, where workers take batches of many
  messages at once: one trip to a worker thread, one sync of each Maildir's new/, one index
  transaction and one done-list append for the lot;
* remote recipients go to their destination (the domain, or the relayhost when there is
  one). Each destination has its own lane with at most ``destination_concurrency``
  connections, and all destinations together at most ``outbound_connections``. A connection
  carries every message waiting for its destination, one after another with RSET between,
  and one message with several recipients at a destination is sent once, with several RCPTs.

When every part of an attempt has reported, the results go into the index in one
transaction and the message is either finished (every recipient delivered or failed) or
waits for its next attempt. Retries follow Postfix's defaults: the first after 5 minutes,
then doubling up to an hour between tries; a recipient still failing temporarily after the
queue lifetime (5 days) fails for good, and the sender gets one delay warning after 4 hours.
The clock is a parameter, so tests can make days pass at once. Nothing polls: a timer per
waiting message wakes it when it is due.

Notifications (RFC 3464 reports, built by ``pigeon.bounce``) honour the DSN requests of RFC
3461: NOTIFY says which events the sender wants to hear of (default: failure and delay),
RET=HDRS returns only the header, ENVID and ORCPT are reported back. A report is stored in
the spool *before* the recipients it reports on are recorded as final, so a crash between
the two sends a second report at worst, never none. A notification to the null sender is
never sent: the failure of a bounce goes to the postmaster, and a failure of that is only
logged (RFC 5321 section 6.1).

Administrators act through the index (``pigeon queue``, see ``pigeon.queue.admin``): a
request row waits there for the worker that owns the message, which applies it when rung
(``apply_requests``) or at its next start.

Delivery is idempotent for local mailboxes (each recipient's copy has a name derived from
the queue id), so a message that was being delivered when the process died is delivered
again on start without making a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pigeon import metrics
from pigeon.bounce import build_dsn
from pigeon.delivery.local_checks import MailboxLocks, MailboxUsage, find_loop, header_of
from pigeon.delivery.result import DeliveryResult, MaildirItem, Outcome
from pigeon.log import event, event_at

from .agents import LocalAgent, RemoteAgent, RemoteSession, TerminalAgent
from .envelope import Envelope
from .index import (
    IndexChanges,
    IndexedMessage,
    QueueIndex,
    RecipientState,
    RecipientUpdate,
    Request,
    RequestAction,
)
from .notices import dropped_double_bounce, plan_notice
from .routing import DIRECT, Held, Refused, Router, ToExpansion, ToMailbox
from .spool import BodyReader, BodyReaders, MessageWriter, Spool, SpooledMessage

__all__ = ["ResumeReport", "Scheduler"]

MaildirFinder = Callable[[str], Path | None]

# A notification carries the whole original up to this size, and only its header beyond.
_RETURN_WHOLE_LIMIT = 1 << 20

_PENDING = (RecipientState.QUEUED, RecipientState.DEFERRED)

_T = TypeVar("_T")

_HEADER_READ = 64 * 1024  # of a message, read for the loop checks (a longer header is cut)
# A terminal shows the first MiB of a message (and says when there is more).
_TERMINAL_READ = (1 << 20) + 1
_COPY_CHUNK = 256 * 1024
# Held mail (ATRN) reaches the index at most this long after it was queued, in one
# transaction per interval under load: each transaction costs the index thread its WAL
# writes and locks, and both threads a GIL hand-over.
_HELD_FLUSH_INTERVAL = 0.05

# How many messages waiting for one destination one connection is left to carry before
# another is opened (Postfix ramps up its per-destination concurrency in a similar spirit).
_SHARED_PER_CONNECTION = 10


@dataclass(slots=True)
class _Job:
    """One message the scheduler is responsible for (until it is done)."""

    message: SpooledMessage
    spool: Spool  # the spool that holds the message (a worker may adopt others' spools)
    states: list[RecipientState]
    recovered: bool = False
    # Its rows are in the index (or in the changes being written).
    indexed: bool = field(default=False, init=False)
    attempts: int = field(default=0, init=False)
    warned: bool = field(default=False, init=False)  # a delay warning goes out once
    running: bool = field(default=False, init=False)  # an attempt is under way
    outstanding: int = field(default=0, init=False)  # parts of the attempt yet to report
    results: list[tuple[int, DeliveryResult]] = field(default_factory=list, init=False)
    timer: asyncio.TimerHandle | None = field(default=None, init=False)
    # When the next attempt is due (by the scheduler's clock).
    due: float | None = field(default=None, init=False)
    # Requests to apply once it finishes.
    after: list[Request] = field(default_factory=list, init=False)
    # The body, read once per attempt for remote parts.
    body: bytes | None = field(default=None, init=False)

    # Written out, as the protocol's events are (see pigeon.smtp._events): the compiled build
    # compiles this __init__, not the generated one. Each message makes a job and its parts.
    def __init__(
        self,
        message: SpooledMessage,
        spool: Spool,
        states: list[RecipientState],
        recovered: bool = False,
    ) -> None:
        self.message = message
        self.spool = spool
        self.states = states
        self.recovered = recovered
        self.indexed = False
        self.attempts = 0
        self.warned = False
        self.running = False
        self.outstanding = 0
        self.results = []
        self.timer = None
        self.due = None
        self.after = []
        self.body = None

    @property
    def queue_id(self) -> str:
        return self.message.queue_id

    @property
    def envelope(self) -> Envelope:
        return self.message.envelope

    def positions(self, *states: RecipientState) -> list[int]:
        return [p for p, s in enumerate(self.states) if s in states]

    @property
    def finished(self) -> bool:
        return all(s.final for s in self.states)


@dataclass(slots=True)
class _Part:
    """Recipients of one attempt that go the same way: to local mailboxes (``mailboxes``), to
    expansions (``expansions``), or to another server (``domain``)."""

    job: _Job
    domain: str
    positions: list[int]
    # (route, direct) of each local recipient
    mailboxes: dict[int, tuple[ToMailbox, bool]] = field(default_factory=dict, init=False)
    expansions: dict[int, ToExpansion] = field(default_factory=dict, init=False)
    # Local recipients of SEND, SOML or SAML: their terminals first.
    terminal: bool = field(default=False, kw_only=True)

    def __init__(
        self, job: _Job, domain: str, positions: list[int], *, terminal: bool = False
    ) -> None:
        self.job = job
        self.domain = domain
        self.positions = positions
        self.mailboxes = {}
        self.expansions = {}
        self.terminal = terminal


@dataclass(slots=True)
class _Destination:
    name: str
    waiting: deque[_Part] = field(default_factory=deque)
    connections: int = 0


@dataclass(frozen=True, slots=True)
class ResumeReport:
    """What ``Scheduler.resume`` found."""

    resumed: int  # messages taken up again
    finished: int  # messages the index knew to be done, now marked done in the spool
    missing: list[str]  # index rows whose message is not in the spool (see pigeon queue check)


class Scheduler:
    def __init__(
        self,
        spool: Spool,
        *,
        index: QueueIndex,
        local_agent: LocalAgent,
        router: Router | None = None,
        find_maildir: MaildirFinder | None = None,
        remote_agent: RemoteAgent | None = None,
        concurrency: int = 1,
        outbound_connections: int = 100,
        destination_concurrency: int = 20,
        retry_base: float = 300.0,
        retry_max: float = 3600.0,
        max_lifetime: float = 5 * 86400.0,
        delay_warning: float = 4 * 3600.0,
        clock: Callable[[], float] = time.time,
        batch_size: int = 64,
        reporting_mta: str = "localhost",
        postmaster: str | None = None,
        hop_limit: int = 50,
        quota_exceeded: str = "defer",
        usage: MailboxUsage | None = None,
        terminal_agent: TerminalAgent | None = None,
    ) -> None:
        """``router`` says where each recipient goes (``pigeon.queue.routing``);
        ``find_maildir`` is the simple form of it: a Maildir for local recipients, None for
        the others. ``concurrency`` is how many local-lane batches run at once: one by
        default, because a second delivery thread only fights the event loop for the GIL
        (measured: a third less throughput with four), and one thread's batches grow with
        the load, which shares each Maildir's sync among more messages."""
        if (router is None) == (find_maildir is None):
            raise ValueError("give a router or find_maildir (one of them)")
        self._spool = spool
        self._index = index
        self._agent = local_agent
        self._route: Router = router or _router_from(find_maildir)  # type: ignore[arg-type]
        self._hop_limit = hop_limit
        self._quota_exceeded = quota_exceeded
        self._usage = usage or MailboxUsage()
        self._locks = MailboxLocks()
        self._remote = remote_agent
        self._terminal = terminal_agent
        self._concurrency = concurrency
        self._destination_concurrency = destination_concurrency
        self._outbound = asyncio.Semaphore(outbound_connections)
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._batch_size = batch_size
        self._max_lifetime = max_lifetime
        self._delay_warning = delay_warning
        self._clock = clock
        self._reporting_mta = reporting_mta
        self._postmaster = postmaster
        self._jobs: dict[str, _Job] = {}
        self._local: asyncio.Queue[_Part] = asyncio.Queue()
        self._destinations: dict[str, _Destination] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._changes = IndexChanges()
        self._index_lock = asyncio.Lock()
        self._flush_scheduled = False  # a _flush_index_soon task is waiting to run
        self._last_flush = -_HELD_FLUSH_INTERVAL  # loop time of the last held-mail flush
        self._requests_lock = asyncio.Lock()
        # SQLite connections are used from one thread at a time: all index work goes here.
        self._index_pool = ThreadPoolExecutor(1, thread_name_prefix="pigeon-index")

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work_local(), name=f"delivery-{n}")
            for n in range(self._concurrency)
        ]

    async def resume(
        self, recovered: Sequence[SpooledMessage], *, spool: Spool | None = None
    ) -> ResumeReport:
        """Take up again the messages a spool recovered, each where the index left it:
        delivered recipients are not tried again, deferred ones wait for their time, held
        ones stay held. Messages the index does not know start from scratch; index rows of
        this spool with no message in it are reported, never dropped."""
        spool = spool or self._spool
        rows = await self._in_index(lambda: self._index.messages(owner=spool.worker))
        by_id = {row.queue_id: row for row in rows}
        resumed = finished = 0
        done: list[SpooledMessage] = []
        for message in recovered:
            row = by_id.pop(message.queue_id, None)
            if row is not None and row.done:
                done.append(message)
                continue
            job = self._job_for(message, spool, row)
            self._jobs[message.queue_id] = job
            resumed += 1
            if row is None:
                self._start(job)
            else:
                self._wake_at(job, self._due_of(row))
        missing = []
        for row in by_id.values():
            if row.done:
                self._changes.forgotten.append(row.queue_id)
            else:
                missing.append(row.queue_id)
                event_at(
                    logging.ERROR,
                    "queue_missing",
                    queue_id=row.queue_id,
                    detail="in the queue index but not in the spool; see pigeon queue check",
                )
        if done:
            # The index recorded them as finished and the spool's done list lost the line
            # (a power cut): finishing them now is what avoids a second delivery.
            await spool.mark_done_many(done)
            self._changes.forgotten.extend(m.queue_id for m in done)
            finished = len(done)
        await self._flush_index()
        return ResumeReport(resumed, finished, missing)

    def submit(self, message: SpooledMessage, *, spool: Spool | None = None) -> None:
        """A newly accepted message: attempt it at once."""
        job = _Job(
            message,
            spool or self._spool,
            [RecipientState.QUEUED] * len(message.envelope.recipients),
        )
        self._jobs[message.queue_id] = job
        self._start(job)

    @property
    def backlog(self) -> int:
        """Messages with an attempt under way (waiting for a lane or being delivered)."""
        return self._running

    @property
    def queued(self) -> int:
        """Messages not yet done, whether under way, waiting for a retry or held."""
        return len(self._jobs)

    async def flush_index(self) -> None:
        """Write now what the index has not been told yet (held mail waits up to
        ``_HELD_FLUSH_INTERVAL`` for its batch): for a reader of the index that must see
        everything this worker holds, such as an ATRN session."""
        await self._flush_index()

    async def wait_idle(self) -> None:
        """Until no attempt is under way (messages waiting for a retry do not count)."""
        while self._running:
            self._idle.clear()
            await self._idle.wait()

    async def stop(self) -> None:
        """Let attempts under way finish; what is still waiting stays in the spool and the
        index, and the next start resumes it."""
        self._stopping = True
        for job in self._jobs.values():
            if job.timer is not None:
                job.timer.cancel()
                job.timer = None
        # Parts still waiting for a lane are not started: their jobs conclude with what
        # they have, the rest simply stays pending.
        while not self._local.empty():
            self._part_done(self._local.get_nowait(), [])
        for destination in self._destinations.values():
            while destination.waiting:
                self._part_done(destination.waiting.popleft(), [])
        await self.wait_idle()
        for task in (*self._workers, *self._tasks):
            task.cancel()
        for task in (*self._workers, *self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        await self._flush_index()
        self._index_pool.shutdown(wait=True)

    # -- administrators' requests -------------------------------------------------------------
    async def apply_requests(self) -> list[str]:
        """Carry out what administrators asked of this worker through the index; returns one
        line per message acted on."""
        async with self._requests_lock:
            owner = self._spool.worker
            requests = await self._in_index(lambda: self._index.take_requests(owner))
            lines: list[str] = []
            for request in requests:
                lines += await self._apply(request)
            lines += await self._record_reports()
            await self._flush_index()
            return lines

    async def _apply(self, request: Request) -> list[str]:
        if request.queue_id is not None:
            job = self._jobs.get(request.queue_id)
            if job is None:
                if request.action is RequestAction.DELETE:
                    # A row with no message behind it (pigeon queue check calls it missing):
                    # deleting is how an administrator forgets it.
                    self._changes.forgotten.append(request.queue_id)
                    return [f"{request.queue_id}: deleted from the index"]
                return [f"{request.queue_id}: not in the queue (delivered or removed meanwhile)"]
            targets = [job]
        else:
            targets = list(self._jobs.values())
        lines = []
        deleting = []
        for job in targets:
            if job.running and request.action is not RequestAction.FLUSH:
                job.after.append(request)
                lines.append(f"{job.queue_id}: {request.action} once the attempt under way ends")
                continue
            if request.action is RequestAction.DELETE:
                deleting.append(job)  # finished together: one trip to the index and spool
                continue
            line = await self._act(job, request)
            if line:
                lines.append(line)
        return lines + await self._delete(deleting)

    async def _act(self, job: _Job, request: Request) -> str | None:
        """Apply one request to a message that has no attempt under way."""
        action = request.action
        if action is RequestAction.DELETE:
            (line,) = await self._delete([job])
            return line
        event("queue_admin", queue_id=job.queue_id, action=action.value, domain=request.domain)
        if action is RequestAction.FLUSH:
            positions = [
                p
                for p in job.positions(*_PENDING)
                if request.domain is None
                or _domain_of(job.envelope.recipients[p]) == request.domain
            ]
            if not positions or job.running:
                return None
            self._cancel_timer(job)
            self._start(job)
            return f"{job.queue_id}: flushed"
        if action is RequestAction.HOLD:
            positions = job.positions(*_PENDING)
            if not positions:
                return None
            self._cancel_timer(job)
            self._set_states(job, positions, RecipientState.HELD)
            return f"{job.queue_id}: held"
        if action is RequestAction.RELEASE:
            positions = job.positions(RecipientState.HELD)
            if not positions:
                return None
            self._set_states(job, positions, RecipientState.QUEUED)
            self._start(job)
            return f"{job.queue_id}: released"
        # BOUNCE: give up now, and tell the sender as if the lifetime had ended.
        self._cancel_timer(job)
        positions = job.positions(*_PENDING, RecipientState.HELD)
        results = [
            (
                p,
                DeliveryResult(
                    job.envelope.recipients[p],
                    Outcome.FAILED,
                    "5.4.7",
                    "message returned by the mail administrator before it could be delivered",
                ),
            )
            for p in positions
        ]
        await self._conclude([(job, results)], expire=False)
        return f"{job.queue_id}: returned to sender"

    async def _delete(self, jobs: list[_Job]) -> list[str]:
        """Remove messages that have no attempt under way, telling nobody."""
        for job in jobs:
            event("queue_admin", queue_id=job.queue_id, action=RequestAction.DELETE.value)
            for position in job.positions(*_PENDING, RecipientState.HELD):
                job.states[position] = RecipientState.FAILED
        await self._finish(jobs)
        return [f"{job.queue_id}: deleted" for job in jobs]

    def _set_states(self, job: _Job, positions: Iterable[int], state: RecipientState) -> None:
        self._index_job(job)
        for position in positions:
            job.states[position] = state
            self._changes.updates.append(
                RecipientUpdate(job.queue_id, position, state, attempted=False)
            )

    # -- starting attempts --------------------------------------------------------------------
    def _start(self, job: _Job) -> None:
        """Begin an attempt for every pending recipient of ``job``."""
        if self._stopping or job.running:
            return
        pending = job.positions(*_PENDING)
        if not pending:
            return
        job.due = None
        job.running = True
        job.attempts += 1
        self._running += 1
        self._idle.clear()
        local = _Part(job, "", [])
        expand = _Part(job, "", [])
        terminal = _Part(job, "", [], terminal=True)
        refused: list[tuple[int, DeliveryResult]] = []
        remote: dict[str, list[int]] = {}
        for position in pending:
            recipient = job.envelope.recipients[position]
            direct = job.envelope.recipient_parameter(position, DIRECT) is not None
            try:
                route = self._route(recipient, direct)
            except Exception as error:  # the directory store is unreadable, say
                event_at(logging.ERROR, "route_error", to=f"<{recipient}>", reason=repr(error))
                route = Refused("4.3.0", f"cannot look up the recipient: {error}")
            if isinstance(route, ToMailbox) and job.envelope.mode != "mail" and not direct:
                terminal.positions.append(position)
                terminal.mailboxes[position] = (route, direct)
            elif isinstance(route, ToMailbox):
                local.positions.append(position)
                local.mailboxes[position] = (route, direct)
            elif isinstance(route, ToExpansion):
                expand.positions.append(position)
                expand.expansions[position] = route
            elif isinstance(route, Refused):
                outcome = Outcome.DEFERRED if route.status.startswith("4") else Outcome.FAILED
                refused.append(
                    (position, DeliveryResult(recipient, outcome, route.status, route.detail))
                )
            elif isinstance(route, Held):
                self._hold_for_fetch(job, position, route)
            else:
                remote.setdefault(_domain_of(recipient), []).append(position)
        parts = [p for p in (local, expand, terminal) if p.positions]
        parts += [_Part(job, domain, positions) for domain, positions in remote.items()]
        job.results.extend(refused)
        if not parts:
            # Nothing to deliver: every recipient was refused by the directory.
            job.outstanding = 1
            self._part_done(_Part(job, "", []), [])
            return
        job.outstanding = len(parts)
        for part in parts:
            if part.terminal:
                self._spawn(self._run_terminal(part))
            elif part.expansions:
                self._spawn(self._run_expansion(part))
            elif not part.domain:
                self._local.put_nowait(part)
            elif self._remote is None:
                # A scheduler built for local delivery only (tests, benchmarks): mail for
                # other domains waits, saying why, and expires like any other deferral.
                detail = "no transport for mail to other domains on this server"
                self._part_done(
                    part,
                    [
                        (
                            p,
                            DeliveryResult(
                                job.envelope.recipients[p], Outcome.DEFERRED, "4.3.5", detail
                            ),
                        )
                        for p in part.positions
                    ],
                )
            else:
                self._enqueue_remote(part, self._remote)

    def _wake_at(self, job: _Job, due: float | None) -> None:
        """Start ``job`` at ``due`` (by the scheduler's clock); None: it waits for a request."""
        self._cancel_timer(job)
        job.due = due
        if due is None:
            return
        delay = due - self._clock()
        if delay <= 0:
            self._start(job)
            return
        job.timer = asyncio.get_running_loop().call_later(delay, self._on_timer, job)

    def _on_timer(self, job: _Job) -> None:
        job.timer = None
        self._start(job)

    @staticmethod
    def _cancel_timer(job: _Job) -> None:
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        job.due = None

    # -- the local lane -------------------------------------------------------------------------
    async def _work_local(self) -> None:
        while True:
            batch = [await self._local.get()]
            # Whatever else is waiting goes along: one trip to a worker thread, one fsync
            # of each Maildir's new/, one index transaction for the lot.
            while len(batch) < self._batch_size and not self._local.empty():
                batch.append(self._local.get_nowait())
            try:
                await self._flush_index()
                outcomes = await asyncio.to_thread(self._deliver_local, batch)
            except Exception as error:  # every part must report, whatever broke
                event_at(logging.ERROR, "delivery_error", lane="local", reason=repr(error))
                outcomes = [
                    self._defer_all(part, f"local delivery failed: {error}") for part in batch
                ]
            finished = [
                part.job
                for part, results in zip(batch, outcomes, strict=True)
                if self._report(part, results)
            ]
            if finished:
                await self._conclude([(job, job.results) for job in finished])

    def _deliver_local(self, batch: list[_Part]) -> list[list[tuple[int, DeliveryResult]]]:
        """Runs in a worker thread: every recipient of the batch in one call to the agent,
        then one sync of each Maildir written to; a failed sync turns its deliveries into
        deferrals."""
        items: list[MaildirItem] = []
        slots: list[tuple[int, int, Path]] = []  # (part in batch, recipient position, maildir)
        # One descriptor per segment for the whole batch (a spool per adopted worker).
        readers: dict[int, BodyReaders] = {}
        outcomes: list[list[tuple[int, DeliveryResult]]] = [[] for _ in batch]
        try:
            for number, part in enumerate(batch):
                job = part.job
                spool_readers = readers.get(id(job.spool))
                if spool_readers is None:
                    spool_readers = readers[id(job.spool)] = job.spool.body_readers()
                header: bytes | None = None
                for position in part.positions:
                    recipient = job.envelope.recipients[position]
                    mailbox, direct = part.mailboxes[position]
                    maildir = mailbox.maildir
                    if header is None:
                        with spool_readers.open(job.message) as reader:
                            header = _header_in(reader)
                    refusal = self._check_mailbox(job, mailbox, recipient, header, direct)
                    if refusal is not None:
                        outcomes[number].append((position, refusal))
                        continue
                    body = spool_readers.open(job.message)
                    items.append(
                        MaildirItem(
                            maildir,
                            body,
                            recipient,
                            job.envelope,
                            f"{job.queue_id}_{position}",
                            # After a restart the copy may exist already, even read and moved
                            # to cur/.
                            check_existing=job.recovered or job.attempts > 1,
                        )
                    )
                    slots.append((number, position, maildir))
            results = self._agent.deliver_many(items) if items else []
        finally:
            for spool_readers in readers.values():
                spool_readers.close()
        written = {
            maildir
            for (_, _, maildir), r in zip(slots, results, strict=True)
            if r.outcome is Outcome.DELIVERED
        }
        failures = self._agent.sync_new_dirs(sorted(written))
        for (number, position, maildir), result in zip(slots, results, strict=True):
            failure = failures.get(maildir)
            if failure is not None and result.outcome is Outcome.DELIVERED:
                # Written, but its name in new/ may not survive a power cut: try again.
                retry = DeliveryResult(
                    result.recipient, failure.outcome, failure.status, failure.detail
                )
                outcomes[number].append((position, retry))
            else:
                outcomes[number].append((position, result))
        return outcomes

    def _check_mailbox(
        self, job: _Job, mailbox: ToMailbox, recipient: str, header: bytes, direct: bool
    ) -> DeliveryResult | None:
        """Why ``recipient``'s copy cannot go into its mailbox now (a loop, a lock, the
        quota), or None. Runs in the local lane's worker thread."""
        if not direct:
            loop = find_loop(header, recipient, hop_limit=self._hop_limit)
            if loop is not None:
                return DeliveryResult(recipient, Outcome.FAILED, "5.4.6", loop)
        if self._locks.is_locked(mailbox.maildir):
            detail = "mailbox busy: locked by another program; will try again"
            return DeliveryResult(recipient, Outcome.DEFERRED, "4.2.1", detail)
        if mailbox.quota and self._usage.of(mailbox.maildir) + job.message.size > mailbox.quota:
            detail = f"mailbox full: {mailbox.address} is over its quota of {mailbox.quota} octets"
            if self._quota_exceeded == "bounce":
                return DeliveryResult(recipient, Outcome.FAILED, "5.2.2", detail)
            return DeliveryResult(recipient, Outcome.DEFERRED, "4.2.2", detail)
        return None

    @staticmethod
    def _read_header(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return _header_in(body)

    # -- on-demand relay (ATRN) ---------------------------------------------------------------
    def _hold_for_fetch(self, job: _Job, position: int, route: Held) -> None:
        """Keep a recipient of a domain held for ATRN: its state says why, in the index, so
        that whichever worker's session the domain's owner reaches can find it. Holding is
        no delivery attempt (the attempt under way does not count it either): nothing goes
        into the recipient's history until the domain's owner fetches it."""
        self._index_job(job)
        job.states[position] = RecipientState.HELD
        self._changes.updates.append(
            RecipientUpdate(
                job.queue_id,
                position,
                RecipientState.HELD,
                None,
                "4.3.2",
                route.detail,
                attempted=False,
            )
        )
        self._flush_index_soon()

    async def _record_reports(self) -> list[str]:
        """Record what ATRN sessions (of any worker) delivered of this worker's held mail, as
        if this scheduler had made the attempts: bounces, retries and all."""
        owner = self._spool.worker
        reports = await self._in_index(lambda: self._index.take_reports(owner))
        by_job: dict[str, list[tuple[int, DeliveryResult]]] = {}
        for report in reports:
            job = self._jobs.get(report.queue_id)
            if job is None or job.running or report.position >= len(job.states):
                continue  # gone, or being delivered here meanwhile: the report is moot
            if job.states[report.position] is not RecipientState.HELD:
                continue
            recipient = job.envelope.recipients[report.position]
            result = DeliveryResult(
                recipient, Outcome(report.outcome), report.status, report.detail, report.remote_mta
            )
            by_job.setdefault(report.queue_id, []).append((report.position, result))
        for queue_id, results in by_job.items():
            job = self._jobs[queue_id]
            job.attempts += 1
            await self._conclude([(job, results)])
        return [
            f"{queue_id}: {len(results)} recipients reported"
            for queue_id, results in by_job.items()
        ]

    # -- terminals (SEND, SOML, SAML) -------------------------------------------------------------
    async def _run_terminal(self, part: _Part) -> None:
        """RFC 821 section 3.5, for local recipients: SEND shows the message on the user's
        terminal only, and fails when none shows it (the user logged off after RCPT; a note
        meant for now is worth a bounce, not a retry hours later); SOML shows it there, or
        else puts it in the mailbox; SAML does both, the terminal once (a retry is for the
        mailbox copy). Mailbox copies join the local lane as a part of their own."""
        job = part.job
        mode = job.envelope.mode
        results: list[tuple[int, DeliveryResult]] = []
        to_mailbox = _Part(job, "", [])
        try:
            message = await asyncio.to_thread(self._read_terminal_copy, job)
            first_try = job.attempts == 1 and not job.recovered
            for position in part.positions:
                recipient = job.envelope.recipients[position]
                mailbox, direct = part.mailboxes[position]
                shown = False
                if mode != "saml" or first_try:
                    shown = await self._show_on_terminal(job, recipient, mailbox, message)
                if mode == "send" or (mode == "soml" and shown):
                    results.append((position, _terminal_result(recipient, shown)))
                else:
                    to_mailbox.positions.append(position)
                    to_mailbox.mailboxes[position] = (mailbox, direct)
        except Exception as error:  # every part must report, whatever broke
            event_at(logging.ERROR, "terminal_error", queue_id=job.queue_id, reason=repr(error))
            done = {p for p, _ in results} | set(to_mailbox.positions)
            results += [
                r for r in self._defer_all(part, f"terminal failed: {error}") if r[0] not in done
            ]
        if to_mailbox.positions:
            job.outstanding += 1
            self._local.put_nowait(to_mailbox)
        if self._report(part, results):
            await self._conclude([(job, job.results)])

    async def _show_on_terminal(
        self, job: _Job, recipient: str, mailbox: ToMailbox, message: bytes
    ) -> bool:
        if self._terminal is None:
            return False  # a scheduler without terminals: nobody is ever logged on
        shown = await self._terminal.write(
            mailbox.address,
            recipient=recipient,
            envelope=job.envelope,
            queue_id=job.queue_id,
            message=message,
        )
        if shown:
            event("terminal", queue_id=job.queue_id, to=f"<{recipient}>", mode=job.envelope.mode)
        return shown

    @staticmethod
    def _read_terminal_copy(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return body.read(_TERMINAL_READ) or b""

    # -- expansions -----------------------------------------------------------------------------
    async def _run_expansion(self, part: _Part) -> None:
        """Aliases, forwarding users and lists: each becomes a new message to its targets,
        carrying ``Delivered-To`` with the expanded address, so that a loop is seen."""
        job = part.job
        results: list[tuple[int, DeliveryResult]] = []
        try:
            header = await asyncio.to_thread(self._read_header, job)
            for position in part.positions:
                expansion = part.expansions[position]
                recipient = job.envelope.recipients[position]
                results.append((position, await self._expand(job, recipient, expansion, header)))
        except Exception as error:  # every part must report, whatever broke
            event_at(logging.ERROR, "expansion_error", queue_id=job.queue_id, reason=repr(error))
            done = {p for p, _ in results}
            results += [
                r for r in self._defer_all(part, f"expansion failed: {error}") if r[0] not in done
            ]
        if self._report(part, results):
            await self._conclude([(job, job.results)])

    async def _expand(
        self, job: _Job, recipient: str, expansion: ToExpansion, header: bytes
    ) -> DeliveryResult:
        loop = find_loop(header, expansion.address, hop_limit=self._hop_limit)
        if loop is not None:
            return DeliveryResult(recipient, Outcome.FAILED, "5.4.6", loop)
        targets = list(expansion.targets)
        parameters: list[tuple[tuple[str, str | None], ...]] = [() for _ in targets]
        if expansion.keep:
            targets.append(expansion.address)
            parameters.append(((DIRECT, "1"),))
        if not targets:
            return DeliveryResult(
                recipient,
                Outcome.DELIVERED,
                "2.0.0",
                f"{expansion.kind} has no members",
                expanded=True,
            )
        envelope = job.envelope
        mail_parameters = tuple(
            (k, v)
            for k, v in envelope.mail_parameters
            # A list's messages are the list's: the poster's DSN requests stop here.
            if expansion.sender is None or k not in ("RET", "ENVID")
        )
        child = Envelope(
            sender=envelope.sender if expansion.sender is None else expansion.sender,
            recipients=tuple(targets),
            client_address=envelope.client_address,
            client_name=envelope.client_name,
            helo=envelope.helo,
            protocol=envelope.protocol,
            body_type=envelope.body_type,
            received_at=time.time(),
            mail_parameters=mail_parameters,
            recipient_parameters=tuple(parameters) if expansion.keep else (),
        )
        writer = self._spool.new_message()
        try:
            await asyncio.to_thread(self._copy_into, job, writer, expansion.address)
            stored = await self._spool.commit(writer, child)
        except Exception:
            writer.discard()
            raise
        event(
            "expanded",
            queue_id=job.queue_id,
            to=f"<{recipient}>",
            kind=expansion.kind,
            new_id=stored.queue_id,
            targets=len(targets),
        )
        self.submit(stored)
        shown = ", ".join(f"<{t}>" for t in expansion.targets[:3])
        if len(expansion.targets) > 3:
            shown += f" and {len(expansion.targets) - 3} more"
        detail = (
            f"{expansion.kind} expanded to {shown or 'its owner'} (queued as {stored.queue_id})"
        )
        return DeliveryResult(recipient, Outcome.DELIVERED, "2.0.0", detail, expanded=True)

    @staticmethod
    def _copy_into(job: _Job, writer: MessageWriter, delivered_to: str) -> None:
        """The new message: ``Delivered-To`` on top, then the original, copied in chunks."""
        writer.write(f"Delivered-To: {delivered_to}\r\n".encode())
        with job.spool.open_body(job.message) as body:
            while chunk := body.read(_COPY_CHUNK):
                writer.write(chunk)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- remote lanes ---------------------------------------------------------------------------
    def _enqueue_remote(self, part: _Part, agent: RemoteAgent) -> None:
        name = agent.destination(part.domain)
        destination = self._destinations.get(name)
        if destination is None:
            destination = self._destinations[name] = _Destination(name)
        destination.waiting.append(part)
        # Messages waiting for a destination share its connections: a new one opens only
        # for every _SHARED_PER_CONNECTION messages waiting, up to the destination's limit.
        wanted = -(-len(destination.waiting) // _SHARED_PER_CONNECTION)
        if destination.connections < min(wanted, self._destination_concurrency):
            self._open_connection(destination, agent)

    def _open_connection(self, destination: _Destination, agent: RemoteAgent) -> None:
        destination.connections += 1
        task = asyncio.create_task(
            self._run_destination(destination, agent), name=f"destination-{destination.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_destination(self, destination: _Destination, agent: RemoteAgent) -> None:
        """One connection: deliver what waits for this destination until nothing does."""
        try:
            async with self._outbound:
                if not destination.waiting:
                    return
                first = destination.waiting[0]
                async with agent.session(first.domain) as session:
                    while destination.waiting:
                        part = destination.waiting.popleft()
                        results = await self._deliver_remote(session, part)
                        if self._report(part, results):
                            await self._conclude([(part.job, part.job.results)])
        finally:
            destination.connections -= 1
            if destination.waiting and not self._stopping:
                # Mail arrived while this connection was saying goodbye.
                self._open_connection(destination, agent)
            elif not destination.connections and not destination.waiting:
                self._destinations.pop(destination.name, None)

    async def _deliver_remote(
        self, session: RemoteSession, part: _Part
    ) -> list[tuple[int, DeliveryResult]]:
        job = part.job
        try:
            self._index_job(job)
            if self._changes:
                await self._flush_index()  # the rows exist before anything leaves
            if job.body is None:
                job.body = await asyncio.to_thread(self._read_body, job)
            recipients = [job.envelope.recipients[p] for p in part.positions]
            answers = await session.deliver(
                recipients, envelope=job.envelope, body=job.body, positions=part.positions
            )
            return list(zip(part.positions, answers, strict=True))
        except Exception as error:  # the agent reports its own failures: this is a bug
            event_at(logging.ERROR, "delivery_error", lane=part.domain, reason=repr(error))
            return self._defer_all(part, f"remote delivery failed: {error}")

    @staticmethod
    def _read_body(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return body.read() or b""

    @staticmethod
    def _defer_all(part: _Part, detail: str) -> list[tuple[int, DeliveryResult]]:
        recipients = part.job.envelope.recipients
        return [
            (p, DeliveryResult(recipients[p], Outcome.DEFERRED, "4.3.0", detail))
            for p in part.positions
        ]

    # -- results ------------------------------------------------------------------------------
    def _report(self, part: _Part, results: list[tuple[int, DeliveryResult]]) -> bool:
        """A part of an attempt is over; True when it was the last one of its job."""
        job = part.job
        metrics.deliveries(part.domain, job.envelope.received_at, results)
        job.results.extend(results)
        job.outstanding -= 1
        if job.outstanding > 0:
            return False
        if not job.results:
            # Nothing was tried (the scheduler is stopping): the attempt did not happen.
            job.attempts -= 1
            self._end_attempt(job)
            return False
        return True

    def _part_done(self, part: _Part, results: list[tuple[int, DeliveryResult]]) -> None:
        """``_report`` from a place that cannot wait: the job concludes in a task."""
        if self._report(part, results):
            job = part.job
            self._spawn(self._conclude([(job, job.results)]))

    def _end_attempt(self, job: _Job) -> None:
        if job.running:
            job.running = False
            self._running -= 1
            if not self._running:
                self._idle.set()

    async def _conclude(
        self, concluded: list[tuple[_Job, list[tuple[int, DeliveryResult]]]], *, expire: bool = True
    ) -> None:
        """Record the results of finished attempts, notify senders, schedule what is left."""
        finished: list[_Job] = []
        for job, results in concluded:
            job.results = []
            job.body = None
            try:
                done = await self._record(job, results, expire=expire)
            except Exception as error:  # one message's trouble is not the lane's
                event_at(logging.ERROR, "queue_error", queue_id=job.queue_id, reason=repr(error))
                done = False
                self._wake_at(job, self._clock() + self._retry_delay(job))
            if done:
                finished.append(job)
        await self._finish(finished)
        for job, _ in concluded:
            self._end_attempt(job)
            requests, job.after = job.after, []
            for request in requests:
                if job.queue_id in self._jobs:
                    await self._act(job, request)
        if self._changes:
            await self._flush_index()

    async def _record(
        self, job: _Job, results: list[tuple[int, DeliveryResult]], *, expire: bool
    ) -> bool:
        """Apply one attempt's results to ``job``; True when nothing is left to do."""
        envelope = job.envelope
        now = self._clock()
        age = now - envelope.received_at
        delay = f"{max(0.0, time.time() - envelope.received_at):.3f}"
        failed: list[tuple[int, DeliveryResult]] = []
        delivered: list[tuple[int, DeliveryResult]] = []
        deferred: list[tuple[int, DeliveryResult]] = []
        for position, result in results:
            fields = {
                "queue_id": job.queue_id,
                "to": f"<{result.recipient}>",
                "status": result.status,
                "detail": result.detail,
                "delay": delay,
            }
            if result.outcome is Outcome.DELIVERED:
                delivered.append((position, result))
                event("delivered", **fields)
            elif result.outcome is Outcome.DEFERRED:
                deferred.append((position, result))
                event("deferred", attempt=job.attempts, **fields)
            else:
                failed.append((position, result))
                event("failed", **fields)
        if deferred and expire and age >= self._max_lifetime:
            # Given up after the queue lifetime (Postfix's maximal_queue_lifetime): the last
            # temporary failure becomes permanent, and the sender is told why.
            for position, result in deferred:
                failed.append(
                    (
                        position,
                        DeliveryResult(
                            result.recipient,
                            Outcome.FAILED,
                            "5.4.7",
                            f"delivery time expired after {age / 86400:.1f} days;"
                            f" last error: {result.detail}",
                            result.remote_mta,
                        ),
                    )
                )
                event("expired", queue_id=job.queue_id, to=f"<{result.recipient}>")
            deferred = []
        warn = bool(deferred) and not job.warned and 0 < self._delay_warning <= age
        retry_at = now + self._retry_delay(job) if deferred else None
        # Tell the sender first: the report is in the spool before the index calls anything
        # final, so a crash in between repeats a report rather than losing one.
        await self._notify(job, failed, delivered, deferred if warn else [])
        if warn:
            job.warned = True
            self._changes.warned.append(job.queue_id)
        updates = [
            *(self._update(job, p, RecipientState.DELIVERED, r) for p, r in delivered),
            *(self._update(job, p, RecipientState.FAILED, r) for p, r in failed),
            *(
                self._update(job, p, RecipientState.DEFERRED, r, next_attempt=retry_at)
                for p, r in deferred
            ),
        ]
        if job.finished and not job.indexed:
            # Delivered (or bounced) at its first attempt without leaving this host: the
            # spool alone accounts for it, and the index is spared three writes.
            return True
        self._index_job(job)
        self._changes.updates.extend(updates)
        if job.finished:
            return True
        if deferred:
            self._wake_at(job, retry_at)
        elif job.positions(RecipientState.QUEUED):
            self._wake_at(job, now)  # released while the attempt ran
        return False

    def _index_job(self, job: _Job) -> None:
        """Give ``job`` its rows in the index (with the next write), if it has none yet."""
        if not job.indexed:
            self._changes.added.append((job.message, job.spool.worker))
            job.indexed = True

    def _update(
        self,
        job: _Job,
        position: int,
        state: RecipientState,
        result: DeliveryResult,
        *,
        next_attempt: float | None = None,
    ) -> RecipientUpdate:
        job.states[position] = state
        return RecipientUpdate(
            job.queue_id, position, state, next_attempt, result.status, result.detail
        )

    def _retry_delay(self, job: _Job) -> float:
        return float(min(self._retry_max, self._retry_base * 2 ** max(0, job.attempts - 1)))

    async def _finish(self, jobs: list[_Job]) -> None:
        """Messages with nothing left to do: done in the index, then in the spool, then
        forgotten by the index."""
        if not jobs:
            return
        for job in jobs:
            self._cancel_timer(job)
            if job.indexed:
                self._changes.done.append(job.queue_id)
            self._jobs.pop(job.queue_id, None)
        await self._flush_index()
        by_spool: dict[int, tuple[Spool, list[SpooledMessage]]] = {}
        for job in jobs:
            by_spool.setdefault(id(job.spool), (job.spool, []))[1].append(job.message)
        for spool, messages in by_spool.values():
            await spool.mark_done_many(messages)
        # Written with the next batch: until then the index says "done", which is enough.
        self._changes.forgotten.extend(job.queue_id for job in jobs if job.indexed)

    # -- notifications --------------------------------------------------------------------------
    async def _notify(
        self,
        job: _Job,
        failed: list[tuple[int, DeliveryResult]],
        delivered: list[tuple[int, DeliveryResult]],
        delayed: list[tuple[int, DeliveryResult]],
    ) -> None:
        """One RFC 3464 report about every event of this attempt that the recipients' NOTIFY
        asks to hear of (``pigeon.queue.notices`` decides), stored and queued from <>."""
        envelope = job.envelope
        notice = plan_notice(
            envelope,
            failed=failed,
            delivered=delivered,
            delayed=delayed,
            postmaster=self._postmaster,
            max_lifetime=self._max_lifetime,
            now=self._clock(),
        )
        if notice is None:
            if dropped_double_bounce(envelope, failed):
                event("bounce_dropped", queue_id=job.queue_id, reason="double bounce")
            return
        original = await asyncio.to_thread(self._read_original, job)
        report = build_dsn(
            reporting_mta=self._reporting_mta,
            sender=notice.to,
            original=original,
            arrival=envelope.received_at,
            recipients=notice.statuses,
            queue_id=job.queue_id,
            envelope_id=envelope.envelope_id,
            headers_only=envelope.return_headers_only or job.message.size > _RETURN_WHOLE_LIMIT,
        )
        writer = self._spool.new_message()
        writer.write(report)
        stored = await self._spool.commit(
            writer, Envelope(sender="", recipients=(notice.to,), received_at=time.time())
        )
        kind = "delay_warning" if notice.warning else "bounce"
        event(kind, queue_id=job.queue_id, bounce_id=stored.queue_id, to=f"<{notice.to}>")
        self.submit(stored)

    @staticmethod
    def _read_original(job: _Job) -> bytes:
        with job.spool.open_body(job.message) as body:
            return body.read(_RETURN_WHOLE_LIMIT + 1) or b""

    # -- the index ------------------------------------------------------------------------------
    def _flush_index_soon(self) -> None:
        """``_flush_index`` in a task of its own, one at a time and at most one every
        ``_HELD_FLUSH_INTERVAL``: the first held message after a quiet spell is written at
        once, a burst of them in a few transactions rather than one per message."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._spawn(self._flush_index_scheduled())

    async def _flush_index_scheduled(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last_flush + _HELD_FLUSH_INTERVAL - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        # Cleared before the flush takes the changes: whatever is added after this line gets
        # a flush of its own, whatever before goes in this one.
        self._flush_scheduled = False
        self._last_flush = loop.time()
        await self._flush_index()

    async def _flush_index(self) -> None:
        """Write the changes gathered so far, in one transaction (callers that arrive while a
        write is under way wait, and their changes go in the next)."""
        async with self._index_lock:
            if not self._changes:
                return
            changes = self._changes.take()
            now = self._clock()
            # Shielded: these changes are taken, so their write must happen even if the task
            # that asked for it is cancelled (stop() cancels a scheduled flush). Cancelled
            # while the index thread was still busy with something else, the write would be
            # dropped from its queue, and the changes with it.
            await asyncio.shield(self._in_index(lambda: self._index.apply(changes, now=now)))

    async def _in_index(self, work: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._index_pool, work)

    def _job_for(self, message: SpooledMessage, spool: Spool, row: IndexedMessage | None) -> _Job:
        states = [RecipientState.QUEUED] * len(message.envelope.recipients)
        job = _Job(message, spool, states, recovered=True)
        if row is not None:
            job.indexed = True
            job.warned = row.warned
            for recipient in row.recipients:
                if recipient.position < len(states):
                    states[recipient.position] = recipient.state
            job.attempts = max((r.attempts for r in row.recipients), default=0)
        return job

    def _due_of(self, row: IndexedMessage) -> float | None:
        states = {r.state for r in row.recipients}
        if RecipientState.QUEUED in states:
            return self._clock()
        times = [
            r.next_attempt
            for r in row.recipients
            if r.state is RecipientState.DEFERRED and r.next_attempt is not None
        ]
        if times:
            return min(times)
        if RecipientState.DEFERRED in states:
            return self._clock()
        return None  # held, or nothing pending


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _terminal_result(recipient: str, shown: bool) -> DeliveryResult:
    if shown:
        return DeliveryResult(recipient, Outcome.DELIVERED, "2.0.0", "shown on the user's terminal")
    return DeliveryResult(
        recipient,
        Outcome.FAILED,
        "5.2.1",
        "the user is not logged on to a terminal any more, and SEND delivers to terminals only",
    )


def _router_from(find_maildir: MaildirFinder) -> Router:
    def route(recipient: str, direct: bool) -> ToMailbox | None:
        maildir = find_maildir(recipient)
        return None if maildir is None else ToMailbox(maildir, recipient)

    return route


def _header_in(body: BodyReader) -> bytes:
    """The header of the message ``body`` reads (from its start)."""
    return header_of(body.read(_HEADER_READ) or b"")
