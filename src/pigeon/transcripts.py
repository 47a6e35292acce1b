"""Transcripts of recent SMTP sessions, for the web UI's live log: ``>`` what the client
sent, ``<`` what the server answered, as ``pigeon send -v`` prints a conversation.

The session hands over the bytes it reads and writes (one call each); this module turns them
into lines. It keeps commands and replies only: message text shows as its size, and AUTH
secrets (the initial response, and every line answering a 334) as ``****``. Everything is
bounded: a few hundred lines per session, a few hundred characters per line, and the last
``capacity`` sessions. Nothing is recorded until ``enable()`` is called (by each worker when
the web UI is configured), so a server without the UI pays one attribute look-up per read.

Most sessions are never looked at, so their bytes are made lines late: a session keeps what
it reads and writes as it came (a list append each), and the lines are made when someone
reads the log, or once a session holds a few KiB of bytes not yet read. A session that ends
with "auth" anywhere in what its client sent is read as it ends, so no secret outlives its
session unmasked. Once a session has all the lines it may show, the rest is not kept.

A log belongs to the event loop its sessions run in, and only that loop's thread changes
it; another thread (the web app's) reads it through the loop, so recording takes no lock.

Like the metrics, this is neutral ground between ``pigeon.server`` and ``pigeon.web``. Each
worker process keeps its own sessions, in memory; the web app asks the other workers for
theirs when someone looks (``pigeon.worker_transcripts``), so recording costs a session no
more with several workers than with one.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Recorder", "Transcript", "TranscriptLog", "enable", "log", "start"]

_MAX_LINES = 300
_MAX_LINE = 300
_MAX_PENDING = 2048  # an unfinished line longer than this is cut (the core refuses it anyway)
_MAX_UNREAD = 4096  # octets a session keeps as they came before they are made lines
_READ_SECONDS = 2.0  # another thread waits this long for the loop to read the log for it
_END_OF_DATA = b"\r\n.\r\n"
_BDAT = re.compile(rb"BDAT\s+(\d{1,12})", re.IGNORECASE)


@dataclass(slots=True)
class Transcript:
    session: str
    client: str
    started: float
    ended: float | None = None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (">" or "<", text)
    number: int = 0  # order of sessions in this process, for the UI
    worker: str = ""  # the process that served it (``w0``, ``w1``, ...)

    @property
    def live(self) -> bool:
        return self.ended is None


class TranscriptLog:
    """The sessions running now and the last ``capacity`` that ended."""

    def __init__(self, capacity: int = 50, worker: str = "w0") -> None:
        self.worker = worker
        self._ended: deque[Recorder] = deque(maxlen=capacity)
        self._live: dict[int, Recorder] = {}
        self._numbers = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None  # where the sessions run

    def open(self, session: str, client: str) -> Recorder:
        """The recorder of a new session."""
        transcript = Transcript(
            session, client, time.time(), number=next(self._numbers), worker=self.worker
        )
        recorder = Recorder(self, transcript)
        self._live[transcript.number] = recorder
        return recorder

    def close(self, recorder: Recorder) -> None:
        transcript = recorder.transcript
        transcript.ended = time.time()
        if self._live.pop(transcript.number, None) is not None:
            self._ended.append(recorder)

    def recent(self, limit: int = 50) -> list[Transcript]:
        """Newest first: the live sessions, then those that ended. From a thread other than
        the loop's, waits for the loop to read them (``TimeoutError`` if it does not)."""
        loop = self.loop
        if loop is None or not loop.is_running() or _running_loop() is loop:
            return self._read(limit)

        async def read() -> list[Transcript]:
            return self._read(limit)

        return asyncio.run_coroutine_threadsafe(read(), loop).result(_READ_SECONDS)

    def _read(self, limit: int) -> list[Transcript]:
        recorders = sorted(
            [*self._live.values(), *self._ended],
            key=lambda r: r.transcript.number,
            reverse=True,
        )[:limit]
        for recorder in recorders:
            recorder.read_unread()
        return [recorder.transcript for recorder in recorders]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Recorder:
    """Keeps one session's bytes, and turns them into transcript lines."""

    __slots__ = (
        "_auth",
        "_before_data",
        "_client_pending",
        "_data_octets",
        "_full",
        "_log",
        "_mode",
        "_server_pending",
        "_skip",
        "_tail",
        "_unanswered",
        "_unread",
        "_unread_octets",
        "transcript",
    )

    def __init__(self, log: TranscriptLog, transcript: Transcript) -> None:
        self._log = log
        self.transcript = transcript
        # What the client (True) and the server (False) sent, in order, not yet made lines.
        self._unread: list[tuple[bool, bytes]] = []
        self._unread_octets = 0
        self._full = False  # the transcript has all the lines it may show: the rest goes
        self._client_pending = b""
        self._server_pending = b""
        # "command"; "data?" (DATA sent, its reply not yet seen); "data" (message text until
        # CRLF.CRLF); "bdat" (``_skip`` octets of a chunk)
        self._mode = "command"
        self._auth = False  # an AUTH exchange is under way: client lines are secrets
        self._skip = 0
        self._tail = b""
        self._data_octets = 0
        # Replies are matched to commands by counting (pipelining sends several at once):
        # commands not answered yet, and of those, how many were sent before DATA.
        self._unanswered = 0
        self._before_data = 0

    def client(self, data: bytes) -> None:
        """What the client sent: one read."""
        self._keep(True, data)

    def server(self, data: bytes) -> None:
        """What the server sent: one write."""
        self._keep(False, data)

    def _keep(self, from_client: bool, data: bytes) -> None:
        if not self._full:
            self._unread.append((from_client, data))
            self._unread_octets += len(data)
            if self._unread_octets > _MAX_UNREAD:
                self.read_unread()

    def end(self) -> None:
        """The session is over. What it kept is read now if it may hold a secret."""
        if self._unread and (self._auth or self._may_hold_secret()):
            self.read_unread()
        self._log.close(self)

    def _may_hold_secret(self) -> bool:
        """AUTH is the only command that sends secrets: is "auth" in what the client sent
        since the last read, with the unfinished line that read left? (A case-insensitive
        regular expression costs some twenty times as much as lower() and a search.)"""
        sent = b"".join(data for from_client, data in self._unread if from_client)
        return b"auth" in (self._client_pending + sent).lower()

    def read_unread(self) -> None:
        """Make lines of the bytes kept so far."""
        if not self._unread:
            return
        unread, self._unread, self._unread_octets = self._unread, [], 0
        for from_client, data in unread:
            if self._full:
                break
            if from_client:
                self._read_client(data)
            else:
                self._read_server(data)

    def _add(self, direction: str, text: str) -> None:
        lines = self.transcript.lines
        if len(lines) < _MAX_LINES:
            if len(text) > _MAX_LINE:
                text = text[:_MAX_LINE] + "…"
            lines.append((direction, text))
        elif len(lines) == _MAX_LINES:
            lines.append(("", "… (the rest of this session is not shown)"))
            self._full = True

    def _read_client(self, data: bytes) -> None:
        if (
            data
            and self._mode not in ("data", "bdat")
            and not self._client_pending
            and data.find(b"\n") == len(data) - 1
        ):
            # One whole command line, what a client that waits for each reply sends.
            self._client_line(data.rstrip(b"\r\n"))
            return
        while data:
            if self._mode == "data":
                data = self._message_text(data)
            elif self._mode == "bdat":
                taken = min(self._skip, len(data))
                self._skip -= taken
                data = data[taken:]
                if not self._skip:
                    self._mode = "command"
            else:
                data = self._client_lines(data)

    def _message_text(self, data: bytes) -> bytes:
        """Message text: counted, not shown. Returns what follows its end."""
        window = self._tail + data[:4]
        at = window.find(_END_OF_DATA)
        if at >= 0:
            end = at + len(_END_OF_DATA) - len(self._tail)
        else:
            at = data.find(_END_OF_DATA)
            end = -1 if at < 0 else at + len(_END_OF_DATA)
        if end < 0:
            self._data_octets += len(data)
            self._tail = (self._tail + data[-4:])[-4:]  # never a copy of the whole text
            return b""
        # The ".CRLF" ends the text and is not counted; when it began in an earlier read,
        # those octets were counted then and come off now (end - 3 is below zero).
        self._data_octets += end - 3
        self._add(">", f"[message text: {self._data_octets} octets]")
        self._add(">", ".")
        self._mode = "command"
        return data[end:]

    def _client_lines(self, data: bytes) -> bytes:
        buffer = self._client_pending + data
        self._client_pending = b""
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                self._client_pending = buffer[:_MAX_PENDING]
                return b""
            line, buffer = buffer[: end + 1], buffer[end + 1 :]
            self._client_line(line.rstrip(b"\r\n"))
            if self._mode in ("data", "bdat"):
                return buffer

    def _client_line(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        word = text.split(" ", 1)[0].upper()
        if word == "DATA" and self._mode == "command":
            self._before_data = self._unanswered
        self._unanswered += 1
        if self._auth:
            self._add(">", "*" if text == "*" else "****")
            return
        if word == "AUTH":
            parts = text.split()
            self._add(">", " ".join(parts[:2]) + (" ****" if len(parts) > 2 else ""))
            self._auth = True
            return
        self._add(">", text)
        if word == "DATA":
            self._mode = "data?"
        elif word == "BDAT":
            match = _BDAT.match(line)
            if match:
                self._skip = int(match.group(1))
                self._add(">", f"[chunk: {self._skip} octets]")
                self._mode = "bdat" if self._skip else "command"

    def _read_server(self, data: bytes) -> None:
        if (
            not self._server_pending
            and data.endswith(b"\r\n")
            and data.count(b"\n") == data.count(b"\r\n")
            and b"\r\r\n" not in data
        ):
            # Whole replies in CRLF lines, as the session writes them: one decode and one
            # split for all their lines (the general path below reads the same lines).
            for text in data[:-2].decode("utf-8", "replace").split("\r\n"):
                self._server_line(text)
            return
        buffer = self._server_pending + data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                self._server_pending = buffer[:_MAX_PENDING]
                return
            line, buffer = buffer[: end + 1], buffer[end + 1 :]
            self._server_line(line.rstrip(b"\r\n").decode("utf-8", "replace"))

    def _server_line(self, text: str) -> None:
        self._add("<", text)
        if len(text) >= 4 and text[3] != "-":  # the last line of a reply
            code = text[:3]
            self._unanswered = max(0, self._unanswered - 1)
            if self._auth and code != "334":
                self._auth = False
            if self._mode == "data?" and self._before_data:
                self._before_data -= 1  # the reply to a command sent before DATA
            elif self._mode == "data?":
                if code == "354":
                    self._mode, self._tail, self._data_octets = "data", b"\r\n", 0
                else:
                    self._mode = "command"


class _Off(Recorder):
    """What sessions get while no one is looking: records nothing."""

    def __init__(self) -> None:
        pass

    def client(self, data: bytes) -> None:
        pass

    def server(self, data: bytes) -> None:
        pass

    def end(self) -> None:
        pass


_OFF = _Off()
_log: TranscriptLog | None = None


def enable(capacity: int = 50, worker: str = "w0") -> TranscriptLog:
    """Start recording sessions (those that start from now on) in this process, the worker
    called ``worker``. Called again, it keeps the log it has."""
    global _log
    if _log is None:
        _log = TranscriptLog(capacity, worker)
    return _log


def log() -> TranscriptLog | None:
    return _log


def start(session: str, client: str) -> Recorder:
    """The recorder of a new session, which runs in this thread's event loop: call
    ``client()``, ``server()`` and ``end()`` on it."""
    if _log is None:
        return _OFF
    loop = _log.loop
    if loop is None or not loop.is_running():  # not asked each time: a getpid() on 3.11
        _log.loop = _running_loop()
    return _log.open(session, client)
