"""BDAT (RFC 3030): a message sent in chunks whose sizes are given, not found.

``BDAT <size> [LAST]`` is followed by exactly ``size`` octets of message: no dot-stuffing and
no terminator to look for, so the reader only counts. Those octets are taken whatever the
state of the transaction, even when the command itself is refused (section 2: otherwise
they would be read as commands), and whatever they contain: a client that announced more
octets than it sent has its next commands taken as message text, and the message is only
accepted after a LAST chunk, once stored.

``ChunkedMessage`` holds what is checked across the chunks of one message: the size limit
(section 4.2: 552 once the chunks add up to more), and, unless the body is BINARYMIME, the
rules for text that DATA enforces (RFC 5321 section 4.5.3.1.6 line length, no NUL, and by
default no bare CR or LF). A line may span chunks, so the checks carry state from one to
the next.
"""

from __future__ import annotations

from ._replies import (
    BARE_LINE_END_IN_DATA,
    LINE_TOO_LONG_IN_DATA,
    NUL_IN_DATA,
    Reply,
)

__all__ = ["ChunkReader", "ChunkedMessage"]


class ChunkReader:
    """Takes exactly ``size`` octets of one chunk out of a buffer, as they arrive."""

    __slots__ = ("last", "remaining", "size")

    def __init__(self, size: int, *, last: bool) -> None:
        self.size = size
        self.remaining = size
        self.last = last

    @property
    def finished(self) -> bool:
        return self.remaining == 0

    def feed(self, buf: bytearray) -> bytes:
        """The next part of the chunk from ``buf`` (consumed in place); the rest of ``buf``
        (pipelined commands, once the chunk is complete) is left alone."""
        take = min(self.remaining, len(buf))
        if not take:
            return b""
        piece = bytes(buf[:take])
        del buf[:take]
        self.remaining -= take
        return piece


class ChunkedMessage:
    """The checks that span the chunks of one message; ``refusal`` says why it is refused."""

    __slots__ = (
        "_binary",
        "_cr_pending",
        "_line",
        "_max_line",
        "_max_size",
        "_reject_bare",
        "refusal",
        "size",
    )

    def __init__(
        self, *, max_size: int | None, max_line: int, reject_bare_line_ends: bool, binary: bool
    ) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self._reject_bare = reject_bare_line_ends
        self._binary = binary  # BODY=BINARYMIME: any octets, any line length
        self._line = 0  # octets of the line under way, from earlier chunks
        self._cr_pending = False  # the previous chunk ended with CR
        self.refusal: Reply | None = None
        self.size = 0

    def fits(self, size: int) -> bool:
        """Whether a chunk of ``size`` more octets keeps the message within the limit."""
        return self._max_size is None or self.size + size <= self._max_size

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        if self._binary or self.refusal is not None or not piece:
            return
        if b"\x00" in piece:
            self.refusal = NUL_IN_DATA
            return
        lines = piece.split(b"\n")
        # Every line but the last is complete with its LF; the last continues in the next
        # piece. A line is too long once it holds max_line octets without its LF, since
        # the LF still to come makes it longer than the limit.
        first = self._line + len(lines[0])
        longest = max(first, *(len(line) for line in lines[1:])) if len(lines) > 1 else first
        if longest + 1 > self._max_line:
            self.refusal = LINE_TOO_LONG_IN_DATA
            return
        self._line = len(lines[-1]) if len(lines) > 1 else first
        if self._reject_bare and self._has_bare_line_end(piece):
            self.refusal = BARE_LINE_END_IN_DATA

    def finish(self) -> None:
        """The LAST chunk is in: a CR left at the very end has no LF to pair with."""
        if self._cr_pending and self._reject_bare and self.refusal is None and not self._binary:
            self.refusal = BARE_LINE_END_IN_DATA

    def _has_bare_line_end(self, piece: bytes) -> bool:
        joined = piece.startswith(b"\n") and self._cr_pending  # CR here, LF there
        if self._cr_pending and not joined:
            return True
        pairs = piece.count(b"\r\n")
        trailing = piece.endswith(b"\r")
        self._cr_pending = trailing
        return piece.count(b"\n") != pairs + joined or piece.count(b"\r") != pairs + trailing
