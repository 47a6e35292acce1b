"""The queue index: the state of every recipient of every queued message, in SQLite.

The spool says *that* a message exists and holds its bytes; the index says *where each of its
recipients stands*: queued, deferred (until when, after which reply), held, delivered or
failed, with the history of attempts. ``pigeon queue`` reads it, the scheduler resumes from
it after a restart, and administrators' requests (hold, flush, delete, ...) reach the
scheduler through it.

One file, ``<data_dir>/queue.db``, in WAL mode, shared by every worker process (each writes
the rows of the messages its spool holds: ``owner``). ``synchronous=NORMAL``: a committed
transaction survives the process being killed, and may be lost only with the machine's
power, which costs a duplicate delivery at worst, never a message: the spool, fsynced before
every 250, is what keeps mail safe, and on start the index is reconciled with it.

A message enters the index when its first attempt leaves something to do, or before anything
of it is sent to another server. One delivered into local mailboxes at its first attempt (the
common case, milliseconds after the 250) never does: the spool accounts for it alone, as it
did before the index existed (after a crash it is delivered again under the same Maildir
names, so no second copy appears), and the index is spared three writes per message.

A message leaves the index in two steps. When nothing is left to do its row is marked
``done`` (before the spool is told), then, once the spool has recorded it, the rows are
deleted. A message that the spool still lists after a crash but the index calls done is
finished at start instead of being delivered a second time.
"""

from __future__ import annotations

import enum
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pigeon.sqlite import use_wal

from .envelope import Envelope
from .spool import SpooledMessage

__all__ = [
    "Attempt",
    "DeliveryReport",
    "IndexChanges",
    "IndexedMessage",
    "IndexedRecipient",
    "QueueIndex",
    "QueueIndexError",
    "RecipientState",
    "Request",
    "RequestAction",
]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id    TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,      -- the worker whose spool holds the message
    segment     TEXT NOT NULL,
    record      INTEGER NOT NULL,   -- offset of the spool record
    body_offset INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    sender      TEXT NOT NULL,
    arrival     REAL NOT NULL,
    envelope    TEXT NOT NULL,      -- Envelope.to_json
    warned      INTEGER NOT NULL DEFAULT 0,  -- the delay warning has gone out
    done        INTEGER NOT NULL DEFAULT 0   -- nothing left to do; the spool is being told
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_owner ON messages (owner);
CREATE TABLE IF NOT EXISTS recipients (
    queue_id     TEXT NOT NULL REFERENCES messages (queue_id) ON DELETE CASCADE,
    position     INTEGER NOT NULL,  -- index into the envelope's recipients
    address      TEXT NOT NULL,
    domain       TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL,              -- deferred: when the next try is due
    status       TEXT NOT NULL DEFAULT '',  -- RFC 3463 code of the last result
    last_reply   TEXT NOT NULL DEFAULT '',
    updated      REAL NOT NULL,
    PRIMARY KEY (queue_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients (domain, state);
CREATE TABLE IF NOT EXISTS attempts (
    queue_id TEXT NOT NULL REFERENCES messages (queue_id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    at       REAL NOT NULL,
    outcome  TEXT NOT NULL,
    status   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (queue_id);
CREATE TABLE IF NOT EXISTS requests (
    id       INTEGER PRIMARY KEY,
    owner    TEXT NOT NULL,         -- the worker that is to carry it out
    action   TEXT NOT NULL,
    queue_id TEXT,                  -- one message, or
    domain   TEXT,                  -- every message with recipients at a domain, or neither: all
    at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reports (
    id         INTEGER PRIMARY KEY,
    owner      TEXT NOT NULL,       -- the worker whose message it is, which records it
    queue_id   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    outcome    TEXT NOT NULL,       -- delivered, deferred or failed
    status     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    remote_mta TEXT NOT NULL,
    at         REAL NOT NULL
);
"""


class QueueIndexError(Exception):
    """The index could not be opened or used; the message says what to do about it."""


class RecipientState(enum.StrEnum):
    QUEUED = "queued"  # waiting for its first (or a released) attempt
    DEFERRED = "deferred"  # failed temporarily; next_attempt says when to try again
    HELD = "held"  # kept by the administrator until released
    DELIVERED = "delivered"
    FAILED = "failed"  # failed for good (and bounced, unless NOTIFY said not to)

    @property
    def final(self) -> bool:
        return self in (RecipientState.DELIVERED, RecipientState.FAILED)


class RequestAction(enum.StrEnum):
    FLUSH = "flush"  # try deferred recipients now
    HOLD = "hold"
    RELEASE = "release"
    DELETE = "delete"  # drop without telling the sender (postsuper -d)
    BOUNCE = "bounce"  # give up now and tell the sender


@dataclass(frozen=True, slots=True)
class IndexedRecipient:
    position: int
    address: str
    state: RecipientState
    attempts: int = 0
    next_attempt: float | None = None
    status: str = ""
    last_reply: str = ""
    updated: float = 0.0

    @property
    def domain(self) -> str:
        return _domain_of(self.address)


@dataclass(frozen=True, slots=True)
class IndexedMessage:
    queue_id: str
    owner: str
    segment: str
    record: int
    body_offset: int
    size: int
    envelope: Envelope
    warned: bool
    done: bool
    recipients: tuple[IndexedRecipient, ...]

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def arrival(self) -> float:
        return self.envelope.received_at

    def spooled(self) -> SpooledMessage:
        """Where the spool keeps this message, as the spool names it."""
        return SpooledMessage(
            self.queue_id, self.envelope, self.size, self.segment, self.record, self.body_offset
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    position: int
    address: str
    at: float
    outcome: str
    status: str
    detail: str


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    owner: str
    action: RequestAction
    queue_id: str | None
    domain: str | None
    at: float


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The result of a delivery made outside the owning worker's scheduler (the held mail
    an ATRN session delivered over its own connection), for the owner to record."""

    queue_id: str
    position: int
    outcome: str  # pigeon.delivery.result.Outcome's value
    status: str
    detail: str
    remote_mta: str = ""


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """One recipient's new state after an attempt, or a request, or a hold.

    ``status`` and ``detail`` become the recipient's last status and reply when the update
    is an attempt or carries a status (why mail is held); a request's update, which has
    none, leaves the last ones as they were."""

    queue_id: str
    position: int
    state: RecipientState
    next_attempt: float | None = None
    status: str = ""
    detail: str = ""
    attempted: bool = True  # counts as an attempt and goes into the history

    @property
    def replied(self) -> bool:
        """Whether ``status`` and ``detail`` are to be recorded."""
        return self.attempted or bool(self.status)


@dataclass(slots=True)
class IndexChanges:
    """Everything one batch of the scheduler's work changes, written in one transaction."""

    added: list[tuple[SpooledMessage, str]] = field(default_factory=list)  # (message, owner)
    updates: list[RecipientUpdate] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.updates or self.warned or self.done or self.forgotten)

    def take(self) -> IndexChanges:
        """These changes, leaving this object empty for the next batch."""
        taken = IndexChanges(self.added, self.updates, self.warned, self.done, self.forgotten)
        self.added, self.updates, self.warned, self.done, self.forgotten = [], [], [], [], []
        return taken


def _fold_first_states(
    changes: IndexChanges,
) -> tuple[dict[tuple[str, int], RecipientUpdate], list[RecipientUpdate]]:
    """Split ``changes.updates`` into the first states of recipients added in the same batch
    (written with their rows instead of by an UPDATE after them) and the updates left.

    A recipient's update is folded when it is the only one for that recipient in the batch:
    the row is inserted with the state, attempt count, status and reply the update would
    have left, which reads the same as inserting then updating. (Its history row, if it was
    an attempt, is written like any other.) Held mail (ATRN) is the common case: added and
    held in one batch.
    """
    if not changes.added or not changes.updates:
        return {}, changes.updates
    added = {m.queue_id for m, _ in changes.added}
    counts: dict[tuple[str, int], int] = {}
    for u in changes.updates:
        if u.queue_id in added:
            key = (u.queue_id, u.position)
            counts[key] = counts.get(key, 0) + 1
    first: dict[tuple[str, int], RecipientUpdate] = {}
    rest: list[RecipientUpdate] = []
    for u in changes.updates:
        key = (u.queue_id, u.position)
        if counts.get(key) == 1:
            first[key] = u
        else:
            rest.append(u)
    return first, rest


# Rows go many to a statement, in statements of these sizes (one of each bit of the count):
# one step, and one release of the GIL, per statement instead of per row, and only a handful
# of statement shapes for sqlite3's statement cache.
_ROWS_PER_STATEMENT = (64, 32, 16, 8, 4, 2, 1)


def _execute_grouped(
    db: sqlite3.Connection, template: str, rows: Sequence[tuple[object, ...]]
) -> None:
    """Run ``template`` for every row of ``rows`` (all of one width), many rows at a time:
    its ``{}`` becomes one group of placeholders per row, ``(?, ?, ...)`` or a lone ``?``
    for rows of one value (``VALUES {}``, ``IN ({})``)."""
    if not rows:
        return
    width = len(rows[0])
    group = "?" if width == 1 else "(" + ",".join("?" * width) + ")"
    start = 0
    for size in _ROWS_PER_STATEMENT:
        while len(rows) - start >= size:
            values = [value for row in rows[start : start + size] for value in row]
            db.execute(template.format(",".join([group] * size)), values)
            start += size


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class QueueIndex:
    """The index file. Methods block (SQLite); the scheduler calls them from one thread.

    ``readonly`` opens an existing index for reading only (``pigeon queue list``): it never
    creates the file and never takes the write lock.
    """

    def __init__(self, path: Path | str, *, readonly: bool = False, timeout: float = 10.0):
        self.path = Path(path)
        self._readonly = readonly
        try:
            if readonly:
                if not self.path.exists():
                    raise QueueIndexError(
                        f"no queue index at {self.path}: has pigeon serve run with this data_dir?"
                    )
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, timeout=timeout, check_same_thread=False, isolation_level=None
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(
                    self.path, timeout=timeout, check_same_thread=False, isolation_level=None
                )
            self._db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                use_wal(self._db)
                self._db.execute("PRAGMA synchronous = NORMAL")
                self._create_schema()
            else:
                self._check_version()
        except sqlite3.Error as error:
            raise QueueIndexError(_describe_open_error(self.path, error)) from error

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> QueueIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        with self._transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise QueueIndexError(
                    f"queue index {self.path} was written by a newer Pigeon"
                    f" (schema {version}, this one knows {_SCHEMA_VERSION})"
                )
            # Statement by statement: executescript() would commit the transaction first.
            schema = re.sub(r"--[^\n]*", "", _SCHEMA)  # the comments hold semicolons
            for statement in schema.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _check_version(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version != _SCHEMA_VERSION:
            raise QueueIndexError(
                f"queue index {self.path} has schema {version}; this Pigeon reads {_SCHEMA_VERSION}"
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock at once, so two workers writing at the same
        # moment wait for each other (busy timeout) instead of failing mid-transaction.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- writing ------------------------------------------------------------------------------
    def apply(self, changes: IndexChanges, *, now: float | None = None) -> None:
        """Write ``changes`` in one transaction."""
        if not changes:
            return
        stamp = time.time() if now is None else now
        try:
            with self._transaction() as db:
                first_states, updates = _fold_first_states(changes)
                self._add(db, changes.added, first_states, stamp)
                self._update(db, updates, stamp)
                _execute_grouped(
                    db,
                    "INSERT INTO attempts (queue_id, position, at, outcome, status, detail)"
                    " VALUES {}",
                    [
                        (u.queue_id, u.position, stamp, u.state.value, u.status, u.detail)
                        for u in changes.updates
                        if u.attempted
                    ],
                )
                _execute_grouped(
                    db,
                    "UPDATE messages SET warned = 1 WHERE queue_id IN ({})",
                    [(q,) for q in changes.warned],
                )
                _execute_grouped(
                    db,
                    "UPDATE messages SET done = 1 WHERE queue_id IN ({})",
                    [(q,) for q in changes.done],
                )
                _execute_grouped(
                    db,
                    "DELETE FROM messages WHERE queue_id IN ({})",
                    [(q,) for q in changes.forgotten],
                )
        except sqlite3.Error as error:
            raise QueueIndexError(f"queue index {self.path}: {error}") from error

    @staticmethod
    def _add(
        db: sqlite3.Connection,
        added: Sequence[tuple[SpooledMessage, str]],
        first_states: dict[tuple[str, int], RecipientUpdate],
        stamp: float,
    ) -> None:
        if not added:
            return
        _execute_grouped(
            db,
            "INSERT OR IGNORE INTO messages (queue_id, owner, segment, record, body_offset,"
            " size, sender, arrival, envelope) VALUES {}",
            [
                (
                    m.queue_id,
                    owner,
                    m.segment,
                    m.offset,
                    m.body_offset,
                    m.size,
                    m.envelope.sender,
                    m.envelope.received_at,
                    m.envelope.to_json().decode("utf-8"),
                )
                for m, owner in added
            ],
        )
        fresh: list[tuple[object, ...]] = []
        settled: list[tuple[object, ...]] = []
        for m, _ in added:
            for position, address in enumerate(m.envelope.recipients):
                first = first_states.get((m.queue_id, position))
                if first is None:
                    row = (m.queue_id, position, address, _domain_of(address), "queued", stamp)
                    fresh.append(row)
                    continue
                replied = first.replied
                settled.append(
                    (
                        m.queue_id,
                        position,
                        address,
                        _domain_of(address),
                        first.state.value,
                        first.next_attempt,
                        1 if first.attempted else 0,
                        first.status if replied else "",
                        first.detail if replied else "",
                        stamp,
                    )
                )
        _execute_grouped(
            db,
            "INSERT OR IGNORE INTO recipients"
            " (queue_id, position, address, domain, state, updated) VALUES {}",
            fresh,
        )
        # The row the update would have left, in the same statement as the insert: a row that
        # is there already (added again after a restart) takes the update as an UPDATE would.
        _execute_grouped(
            db,
            "INSERT INTO recipients (queue_id, position, address, domain, state, next_attempt,"
            " attempts, status, last_reply, updated) VALUES {}"
            " ON CONFLICT (queue_id, position) DO UPDATE SET"
            " state = excluded.state, next_attempt = excluded.next_attempt,"
            " attempts = attempts + excluded.attempts,"
            " status = CASE WHEN excluded.attempts OR excluded.status != ''"
            " THEN excluded.status ELSE status END,"
            " last_reply = CASE WHEN excluded.attempts OR excluded.status != ''"
            " THEN excluded.last_reply ELSE last_reply END,"
            " updated = excluded.updated",
            settled,
        )

    @staticmethod
    def _update(db: sqlite3.Connection, updates: Sequence[RecipientUpdate], stamp: float) -> None:
        if not updates:
            return
        db.executemany(
            "UPDATE recipients SET state = ?, next_attempt = ?, updated = ?,"
            " attempts = attempts + ?,"
            " status = CASE WHEN ? THEN ? ELSE status END,"
            " last_reply = CASE WHEN ? THEN ? ELSE last_reply END"
            " WHERE queue_id = ? AND position = ?",
            [
                (
                    u.state.value,
                    u.next_attempt,
                    stamp,
                    1 if u.attempted else 0,
                    u.replied,
                    u.status,
                    u.replied,
                    u.detail,
                    u.queue_id,
                    u.position,
                )
                for u in updates
            ],
        )

    def claim(self, previous_owner: str, owner: str) -> int:
        """Rows of ``previous_owner`` (a worker whose spool ``owner`` adopted) become
        ``owner``'s, with their pending requests; returns how many messages moved."""
        with self._transaction() as db:
            moved = db.execute(
                "UPDATE messages SET owner = ? WHERE owner = ?", (owner, previous_owner)
            ).rowcount
            db.execute("UPDATE requests SET owner = ? WHERE owner = ?", (owner, previous_owner))
            db.execute("UPDATE reports SET owner = ? WHERE owner = ?", (owner, previous_owner))
        return moved

    # -- reading ------------------------------------------------------------------------------
    def messages(
        self, *, owner: str | None = None, queue_ids: Iterable[str] | None = None
    ) -> list[IndexedMessage]:
        """Messages in arrival order, all or of one owner or with the given ids."""
        query = (
            "SELECT queue_id, owner, segment, record, body_offset, size, envelope, warned, done"
            " FROM messages"
        )
        order = " ORDER BY arrival, queue_id"
        if owner is None:
            rows = self._db.execute(query + order).fetchall()
        else:
            rows = self._db.execute(query + " WHERE owner = ?" + order, (owner,)).fetchall()
        wanted = None if queue_ids is None else set(queue_ids)
        if wanted is not None:
            rows = [r for r in rows if r[0] in wanted]
        recipients = self._recipients_of([r[0] for r in rows], everything=wanted is None)
        return [
            IndexedMessage(
                queue_id=r[0],
                owner=r[1],
                segment=r[2],
                record=r[3],
                body_offset=r[4],
                size=r[5],
                envelope=Envelope.from_json(r[6].encode("utf-8")),
                warned=bool(r[7]),
                done=bool(r[8]),
                recipients=tuple(recipients.get(r[0], ())),
            )
            for r in rows
        ]

    def message(self, queue_id: str) -> IndexedMessage | None:
        found = self.messages(queue_ids=[queue_id])
        return found[0] if found else None

    def _recipients_of(
        self, queue_ids: list[str], *, everything: bool
    ) -> dict[str, list[IndexedRecipient]]:
        query = (
            "SELECT queue_id, position, address, state, attempts, next_attempt, status,"
            " last_reply, updated FROM recipients"
        )
        if everything:
            rows = self._db.execute(query).fetchall()
        else:
            rows = []
            for start in range(0, len(queue_ids), 500):
                chunk = queue_ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._db.execute(f"{query} WHERE queue_id IN ({marks})", chunk).fetchall()
        found: dict[str, list[IndexedRecipient]] = {}
        for row in sorted(rows, key=lambda r: (r[0], r[1])):
            found.setdefault(row[0], []).append(
                IndexedRecipient(
                    position=row[1],
                    address=row[2],
                    state=RecipientState(row[3]),
                    attempts=row[4],
                    next_attempt=row[5],
                    status=row[6],
                    last_reply=row[7],
                    updated=row[8],
                )
            )
        return found

    def attempts(self, queue_id: str) -> list[Attempt]:
        rows = self._db.execute(
            "SELECT a.position, r.address, a.at, a.outcome, a.status, a.detail"
            " FROM attempts a JOIN recipients r USING (queue_id, position)"
            " WHERE a.queue_id = ? ORDER BY a.at, a.rowid",
            (queue_id,),
        ).fetchall()
        return [Attempt(*row) for row in rows]

    def owners(self) -> list[str]:
        rows = self._db.execute("SELECT DISTINCT owner FROM messages ORDER BY owner").fetchall()
        return [str(r[0]) for r in rows]

    def count(self) -> dict[str, int]:
        """Recipients by state, of messages not done."""
        rows = self._db.execute(
            "SELECT r.state, count(*) FROM recipients r JOIN messages m USING (queue_id)"
            " WHERE m.done = 0 GROUP BY r.state"
        ).fetchall()
        return {str(state): int(n) for state, n in rows}

    # -- requests from administrators -------------------------------------------------------
    def add_request(
        self,
        action: RequestAction,
        *,
        queue_id: str | None = None,
        domain: str | None = None,
        owners: Sequence[str] = (),
    ) -> list[str]:
        """Ask the workers to act; returns the owners asked. A request for one message goes
        to its owner; one for a domain or for everything goes to ``owners`` (or every owner
        with messages)."""
        with self._transaction() as db:
            if queue_id is not None:
                row = db.execute(
                    "SELECT owner FROM messages WHERE queue_id = ?", (queue_id,)
                ).fetchone()
                if row is None:
                    return []
                targets = [str(row[0])]
            else:
                found = db.execute("SELECT DISTINCT owner FROM messages").fetchall()
                targets = sorted({str(r[0]) for r in found} | set(owners))
            stamp = time.time()
            db.executemany(
                "INSERT INTO requests (owner, action, queue_id, domain, at) VALUES (?,?,?,?,?)",
                [
                    (
                        owner,
                        action.value,
                        queue_id,
                        None if domain is None else domain.lower(),
                        stamp,
                    )
                    for owner in targets
                ],
            )
        return targets

    def take_requests(self, owner: str) -> list[Request]:
        """The requests waiting for ``owner``, oldest first; they are removed."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id, owner, action, queue_id, domain, at FROM requests WHERE owner = ?"
                " ORDER BY id",
                (owner,),
            ).fetchall()
            db.execute("DELETE FROM requests WHERE owner = ?", (owner,))
        return [Request(r[0], r[1], RequestAction(r[2]), r[3], r[4], r[5]) for r in rows]

    # -- results of deliveries made elsewhere (ATRN) ------------------------------------------
    def add_reports(self, reports: Sequence[DeliveryReport]) -> list[str]:
        """Leave ``reports`` for the workers that own their messages; returns those owners."""
        with self._transaction() as db:
            owners: dict[str, str] = {}
            rows = []
            stamp = time.time()
            for report in reports:
                if report.queue_id not in owners:
                    row = db.execute(
                        "SELECT owner FROM messages WHERE queue_id = ?", (report.queue_id,)
                    ).fetchone()
                    if row is None:
                        continue  # gone meanwhile (deleted by an administrator)
                    owners[report.queue_id] = str(row[0])
                rows.append(
                    (
                        owners[report.queue_id],
                        report.queue_id,
                        report.position,
                        report.outcome,
                        report.status,
                        report.detail,
                        report.remote_mta,
                        stamp,
                    )
                )
            db.executemany(
                "INSERT INTO reports (owner, queue_id, position, outcome, status, detail,"
                " remote_mta, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return sorted(set(owners.values()))

    def take_reports(self, owner: str) -> list[DeliveryReport]:
        """The reports waiting for ``owner``, oldest first; they are removed."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT queue_id, position, outcome, status, detail, remote_mta FROM reports"
                " WHERE owner = ? ORDER BY id",
                (owner,),
            ).fetchall()
            db.execute("DELETE FROM reports WHERE owner = ?", (owner,))
        return [DeliveryReport(*row) for row in rows]

    def reported(self) -> set[tuple[str, int]]:
        """(queue id, position) of every recipient with a report not yet recorded."""
        rows = self._db.execute("SELECT queue_id, position FROM reports").fetchall()
        return {(str(r[0]), int(r[1])) for r in rows}

    def pending_requests(self) -> list[Request]:
        rows = self._db.execute(
            "SELECT id, owner, action, queue_id, domain, at FROM requests ORDER BY id"
        ).fetchall()
        return [Request(r[0], r[1], RequestAction(r[2]), r[3], r[4], r[5]) for r in rows]

    def integrity_problems(self) -> list[str]:
        """What SQLite's own check finds wrong with the file (empty when it is sound)."""
        rows = self._db.execute("PRAGMA quick_check").fetchall()
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems


def _describe_open_error(path: Path, error: sqlite3.Error) -> str:
    return (
        f"queue index {path} cannot be opened: {error}. Pigeon keeps mail in the spool, not"
        f" in the index: move the file aside (mv {path} {path}.broken) and start Pigeon"
        " again; it rebuilds the index from the spool (recipients already delivered to"
        " other servers may then get a second copy)"
    )
