"""The DATA phase: find the end of the message and undo dot-stuffing (RFC 5321 4.5.2).

The reader works on the connection's input buffer in place and hands back whole lines, so the
message can be streamed to the spool as it arrives. It searches the buffer for the terminator
with ``bytes.find`` instead of walking line by line: most of the work happens in C.

Only ``CRLF . CRLF`` ends a message. A bare LF or bare CR never does, whatever precedes or
follows it: treating ``LF . LF`` or ``LF . CRLF`` as an end is what let SMTP smuggling
(CVE-2023-51764) split one message into two. By default a message holding a bare CR or LF is
refused after its end, as Postfix's ``smtpd_forbid_bare_newline`` does; when allowed, the bytes
are kept as data.
"""

from __future__ import annotations

from ._replies import (
    BARE_LINE_END_IN_DATA,
    LINE_TOO_LONG_IN_DATA,
    MESSAGE_TOO_BIG,
    NUL_IN_DATA,
    Reply,
)

__all__ = ["DataReader"]

_CRLF = b"\r\n"
_END = b"\r\n.\r\n"


class DataReader:
    """Consumes DATA bytes from a buffer; returns unstuffed text and notes why to refuse it."""

    __slots__ = (
        "_at_line_start",
        "_max_line",
        "_max_size",
        "_reject_bare",
        "finished",
        "refusal",
        "size",
    )

    def __init__(self, *, max_size: int | None, max_line: int, reject_bare_line_ends: bool) -> None:
        self._max_size = max_size
        self._max_line = max_line
        self._reject_bare = reject_bare_line_ends
        # True when the buffer starts a new line: the text begins at a line start, and every
        # piece handed out ends with CRLF.
        self._at_line_start = True
        self.finished = False
        self.refusal: Reply | None = None
        self.size = 0

    def feed(self, buf: bytearray) -> bytes:
        """Take what can be taken from ``buf`` (consumed in place); return message text.

        After the terminator has been consumed, ``finished`` is True and the rest of ``buf``
        (pipelined commands) is left alone.
        """
        if self.finished or not buf:
            return b""
        if self._at_line_start:
            if buf.startswith(b".\r\n"):
                del buf[:3]
                self.finished = True
                return b""
            if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                return b""  # may yet be the terminator
        end = buf.find(_END)
        if end >= 0:
            block = _take_front(buf, end + 2, end + 5)
            self.finished = True
            return self._take(block)
        last = buf.rfind(_CRLF)
        if last < 0:
            self._check_partial_line(buf)
            return b""
        block = _take_front(buf, last + 2, last + 2)
        text = self._take(block)
        self._at_line_start = True
        self._check_partial_line(buf)
        return text

    def _take(self, block: bytes) -> bytes:
        """Check a run of whole lines and return it unstuffed, or b"" once refused."""
        if self.refusal is not None:
            return b""
        if not self._lines_fit(block) and self._too_long(block.split(_CRLF)):
            self.refusal = LINE_TOO_LONG_IN_DATA
            return b""
        if self._reject_bare:
            # Every CR and LF is half of a CRLF exactly when there are twice as many of them
            # as CRLF pairs (each count is at least the pairs'): one pass finds them all.
            line_ends = len(block) - len(block.translate(None, b"\r\n"))
            if line_ends != 2 * block.count(_CRLF):
                self.refusal = BARE_LINE_END_IN_DATA
                return b""
        if b"\x00" in block:
            self.refusal = NUL_IN_DATA
            return b""
        # 4.5.2: a line that starts with "." had one more "." put in front by the client.
        if self._at_line_start and block.startswith(b"."):
            block = block[1:]
        text = block.replace(b"\r\n.", b"\r\n")
        self.size += len(text)
        if self._max_size is not None and self.size > self._max_size:
            self.refusal = MESSAGE_TOO_BIG
            return b""
        return text

    def _lines_fit(self, block: bytes) -> bool:
        """True when no line of ``block`` (whole lines) is over the limit, found without
        splitting it into lines: each step jumps to the last CRLF within one limit's length,
        so a message of short lines costs a search per limit's worth of text, all in C.
        False means "look closer" (``_too_long`` allows a stuffed line one octet more)."""
        limit = self._max_line
        pos, size = 0, len(block)
        while size - pos > limit:
            last = block.rfind(_CRLF, pos, pos + limit)
            if last < 0:
                return False
            pos = last + 2
        return True

    def _too_long(self, lines: list[bytes]) -> bool:
        """Is one of these lines (CRLF removed) over the limit?

        RFC 5321 section 4.5.3.1.6 counts a text line "not counting the leading dot duplicated
        for transparency", so a stuffed line may take one octet more on the wire.
        """
        longest = max(map(len, lines)) + 2
        if longest <= self._max_line:
            return False
        if longest > self._max_line + 1:
            return True
        # Lines of exactly one octet over: fine if each is a stuffed one at a line start.
        return any(
            len(line) + 2 == longest
            and not (line.startswith(b".") and (index or self._at_line_start))
            for index, line in enumerate(lines)
        )

    def _check_partial_line(self, buf: bytearray) -> None:
        """The buffer holds part of a line; if it is already too long, refuse and drop it."""
        stuffed = self._at_line_start and buf.startswith(b".")
        if len(buf) < self._max_line + stuffed:
            return
        if self.refusal is None:
            self.refusal = LINE_TOO_LONG_IN_DATA
        # Keep a trailing CR: with the next byte it may make the CRLF before the terminator.
        buf[:] = buf[-1:] if buf.endswith(b"\r") else b""
        self._at_line_start = False


def _take_front(buf: bytearray, keep: int, drop: int) -> bytes:
    """The first ``keep`` octets of ``buf`` as bytes (one copy), and the first ``drop``
    octets removed from it (cheap at the front of a bytearray)."""
    with memoryview(buf) as view:
        block = view[:keep].tobytes()
    del buf[:drop]
    return block
