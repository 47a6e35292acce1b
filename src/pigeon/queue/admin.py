"""Queue administration: what ``pigeon queue`` (and the web API) do, as a library.

Reading (list, show, check) opens the index read-only and the spool's segment files for
reading, so it works the same whether a server is running or not and never disturbs one.
Acting (flush, hold, release, delete, bounce) puts a request into the index for the worker
that owns the message, then rings that worker (``pigeon.queue.control``), which carries it
out and says what it did. A request made while no server runs waits in the index and is
carried out when the server starts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .control import is_running, ring
from .index import Attempt, IndexedMessage, QueueIndex, QueueIndexError, RequestAction
from .spool import spool_workers

__all__ = ["ActionReport", "MessageReport", "Problem", "QueueAdmin", "UnknownMessage"]

_RECORD_MAGIC = b"\x89PGR"
_RECORD_HEAD = struct.Struct(">4sHIQI")
_HEADER_LIMIT = 256 * 1024  # a header bigger than this is shown cut


@dataclass(frozen=True, slots=True)
class MessageReport:
    """``pigeon queue show``: a message, its header as stored, and its history."""

    message: IndexedMessage
    header: str | None  # None: the spool no longer has it (see problem)
    attempts: list[Attempt]
    problem: str = ""


@dataclass(frozen=True, slots=True)
class ActionReport:
    """What became of an administrator's request."""

    action: RequestAction
    workers: dict[str, list[str] | None]  # each worker asked: its report, or None if not running
    unknown: tuple[str, ...] = ()  # queue ids asked for that are not in the queue

    @property
    def waiting(self) -> list[str]:
        """Workers that were not running: the request waits for them to start."""
        return [w for w, lines in self.workers.items() if lines is None]

    @property
    def lines(self) -> list[str]:
        return [line for lines in self.workers.values() if lines for line in lines]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something ``pigeon queue check`` found, and what to do about it."""

    queue_id: str | None
    problem: str
    fix: str


class UnknownMessage(LookupError):
    """No message with that queue id (or none of those ids, its ``args``) is in the queue."""


class QueueAdmin:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.index_path = data_dir / "queue.db"
        self.spool_dir = data_dir / "spool"

    def _open(self, *, readonly: bool = True) -> QueueIndex:
        return QueueIndex(self.index_path, readonly=readonly)

    # -- reading --------------------------------------------------------------------------------
    def messages(self) -> list[IndexedMessage]:
        """Every message still in the queue, oldest first."""
        if not self.index_path.exists():
            return []  # nothing has ever been queued here
        with self._open() as index:
            return [m for m in index.messages() if not m.done]

    def show(self, queue_id: str) -> MessageReport:
        with self._open() as index:
            message = index.message(queue_id)
            if message is None or message.done:
                raise UnknownMessage(queue_id)
            attempts = index.attempts(queue_id)
        try:
            header = self._read_header(message)
        except (OSError, ValueError) as error:
            return MessageReport(message, None, attempts, str(error))
        return MessageReport(message, header, attempts)

    def _read_header(self, message: IndexedMessage) -> str:
        self._check_record(message)
        path = self.spool_dir / "segments" / message.segment
        with path.open("rb") as file:
            file.seek(message.body_offset)
            data = file.read(min(message.size, _HEADER_LIMIT))
        end = data.find(b"\r\n\r\n")
        header = data if end < 0 else data[: end + 2]
        return header.decode("utf-8", "replace").replace("\r\n", "\n")

    def _check_record(self, message: IndexedMessage) -> None:
        """The spool record the index points at is there and is this message's; raises
        OSError or ValueError saying what is wrong."""
        path = self.spool_dir / "segments" / message.segment
        if not path.exists():
            raise FileNotFoundError(f"spool segment {message.segment} is missing")
        with path.open("rb") as file:
            file.seek(message.record)
            head = file.read(_RECORD_HEAD.size)
            if len(head) < _RECORD_HEAD.size:
                raise ValueError(f"spool segment {message.segment} ends before the record")
            magic, id_len, _, body_len, _ = _RECORD_HEAD.unpack(head)
            found = file.read(id_len)
        if magic != _RECORD_MAGIC or found != message.queue_id.encode():
            raise ValueError(
                f"spool segment {message.segment} holds no record of this message at"
                f" offset {message.record}"
            )
        if body_len != message.size:
            raise ValueError(f"spool record size {body_len} differs from the index's")

    # -- acting ---------------------------------------------------------------------------------
    def act(
        self,
        action: RequestAction,
        *,
        queue_ids: Sequence[str] = (),
        domain: str | None = None,
        timeout: float = 60.0,
    ) -> ActionReport:
        """Ask the owning worker(s) to carry out ``action`` and wait for their report.

        ``queue_ids`` name messages (as postsuper takes several): those not in the queue are
        reported in ``unknown``, and if none is, :class:`UnknownMessage` is raised and
        nothing is asked. Without ids, ``domain`` limits a flush to recipients at that
        domain, and with neither the action is for every message."""
        wanted = list(dict.fromkeys(queue_ids))  # each once, in the order given
        with self._open(readonly=False) as index:
            unknown = [q for q in wanted if (m := index.message(q)) is None or m.done]
            if wanted and len(unknown) == len(wanted):
                raise UnknownMessage(*unknown)
            owners: set[str] = set()
            workers = sorted(spool_workers(self.spool_dir))
            missing = set(unknown)
            targets: list[str | None] = [q for q in wanted if q not in missing]
            for queue_id in targets or [None]:
                owners.update(
                    index.add_request(action, queue_id=queue_id, domain=domain, owners=workers)
                )
        # One ring per worker, however many requests it was given: it carries them all out
        # and reports them together.
        return ActionReport(
            action,
            {owner: ring(self.data_dir, owner, timeout=timeout) for owner in sorted(owners)},
            tuple(unknown),
        )

    # -- checking -------------------------------------------------------------------------------
    def check(self) -> list[Problem]:
        """Every inconsistency between the index and the spool, each with its fix."""
        if not self.index_path.exists():
            if spool_workers(self.spool_dir):
                return [
                    Problem(
                        None,
                        f"the spool has messages but there is no queue index {self.index_path}",
                        "start pigeon serve: it rebuilds the index from the spool",
                    )
                ]
            return []
        try:
            index = self._open()
        except QueueIndexError as error:
            return [Problem(None, str(error), _rebuild_fix(self.index_path))]
        problems: list[Problem] = []
        with index:
            try:
                broken = index.integrity_problems()
                messages = index.messages()
                requests = index.pending_requests()
            except Exception as error:  # sqlite3.DatabaseError and kin: a damaged file
                text = f"queue index {self.index_path}: {error}"
                return [Problem(None, text, _rebuild_fix(self.index_path))]
        problems += [
            Problem(None, f"queue index {self.index_path}: {text}", _rebuild_fix(self.index_path))
            for text in broken
        ]
        for message in messages:
            if message.done:
                continue
            try:
                self._check_record(message)
            except (OSError, ValueError) as error:
                problems.append(
                    Problem(
                        message.queue_id,
                        f"{error}: the index lists the message but the spool does not hold it",
                        f"restore {self.spool_dir / 'segments' / message.segment} from a"
                        f" backup, or forget the message: pigeon queue delete {message.queue_id}",
                    )
                )
        running = {w for w in {r.owner for r in requests} if is_running(self.data_dir, w)}
        for request in requests:
            if request.owner not in running:
                problems.append(
                    Problem(
                        request.queue_id,
                        f"a {request.action} request waits for worker {request.owner},"
                        " which is not running",
                        "start pigeon serve (with as many workers as before) to carry it out",
                    )
                )
        return problems


def _rebuild_fix(path: Path) -> str:
    return (
        f"stop Pigeon, move the index aside (mv {path} {path}.broken) and start it again:"
        " the index is rebuilt from the spool, which holds every message"
    )
