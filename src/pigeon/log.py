"""Structured logging: one line per event, ``key=value`` pairs (logfmt).

Lines like ``event=message queue_id=... client=... from=<...> to=<...> size=... result=queued``
can be read by people and by grep, awk or a log shipper alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from typing import TextIO

__all__ = ["configure_logging", "event", "event_at"]

logger = logging.getLogger("pigeon")
_server_handler: _BatchingHandler | None = None  # set by configure_logging


# Counts the forks this process descends from, so that a cache made before one is not
# trusted after it.
_forks = 0


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def _quote(value: object) -> str:
    text = str(value)
    # Whole-string tests in C: a busy server formats hundreds of thousands of values.
    if text.isprintable() and text and " " not in text and '"' not in text and "=" not in text:
        return text
    escaped = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def event(name: str, /, **fields: object) -> None:
    """Log one event at INFO. ``None`` fields are left out."""
    event_at(logging.INFO, name, **fields)


def event_at(level: int, name: str, /, **fields: object) -> None:
    """Log one event at ``level``. ``None`` fields are left out."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)
    message = " ".join(parts)
    handler = _server_handler
    if handler is not None and logger.handlers == [handler] and not logger.filters:
        # The server's own handler alone hears the pigeon logger (configure_logging): the
        # line goes straight to it, without the LogRecord and formatter it would otherwise
        # cost (most of the time a busy server spends logging).
        handler.emit_line(logging.getLevelName(level), message)
        return
    # Made directly rather than by logger.log, which would look up the caller's source line
    # on the stack for every record: nothing here prints it.
    logger.handle(logger.makeRecord(logger.name, level, "", 0, message, (), None))


def configure_logging(level: int = logging.INFO) -> None:
    global _server_handler
    handler = _BatchingHandler(sys.stderr)
    handler.setFormatter(_Formatter(_FORMAT))
    # The format shows neither process nor thread: records need not look them up.
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger("pigeon")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    _server_handler = handler


_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _Formatter(logging.Formatter):
    """Timestamps to the second, each second's text made once (strftime is most of the cost
    of formatting a line, and a busy server logs thousands of lines a second)."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self.stamp(record.created)

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._second = second
        return self._stamp


class _BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes the lines logged during one turn of the event loop with one write, at the end
    of that turn: a message accepted and delivered logs several lines, and a system call
    each was a measurable part of the server's time. Lines logged outside the event loop's
    thread (delivery threads, start-up) are written at once, after any waiting ones, so the
    order stays as logged."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._scheduled = False
        # Per thread, the loop last seen running there: asyncio.get_running_loop() makes a
        # getpid() system call each time, a record's largest cost on some machines.
        self._seen = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # as logging.StreamHandler does: a bad record must not crash us
            self.handleError(record)
            return
        self._add_line(line)

    def _add_line(self, line: str) -> None:
        loop = self._running_loop()
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line)
            if loop is None:
                self._write_pending()
            elif not self._scheduled:
                self._scheduled = True
                loop.call_soon(self._flush_pending)

    def emit_line(self, level_name: str, message: str) -> None:
        """``emit`` for a line with no record: what ``_FORMAT`` would make of it."""
        formatter = self.formatter
        assert isinstance(formatter, _Formatter)
        self._add_line(f"{formatter.stamp(time.time())} {level_name} {message}{self.terminator}")

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop running in this thread, if any."""
        seen: tuple[asyncio.AbstractEventLoop, int] | None = getattr(self._seen, "loop", None)
        # Only one loop runs in a thread at a time: if the one seen here is running, it is
        # the one; unless this process was forked since, where it runs no more.
        if seen is not None and seen[1] == _forks and seen[0].is_running():
            return seen[0]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._seen.loop = (loop, _forks)
        return loop

    def _flush_pending(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._scheduled = False
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed pipe): logging must never stop the mail

    def flush(self) -> None:
        """At exit (logging.shutdown) too: whatever is still waiting goes out."""
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()
            super().flush()
