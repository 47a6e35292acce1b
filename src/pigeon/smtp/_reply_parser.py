"""Reading replies: the client's half of the grammar (RFC 5321 section 4.2).

    Reply-line     = *( Reply-code "-" [ textstring ] CRLF )
                     Reply-code [ SP textstring ] CRLF
    Reply-code     = %x32-35 %x30-35 %x30-39

A server that breaks this (a line with no code, codes that change within one multi-line
reply, endless continuation lines) raises ``ReplyError``: the peer, not us, broke the protocol,
and the error says how.
"""

from __future__ import annotations

import re

from ._replies import Reply

__all__ = ["ReplyError", "ReplyParser"]

_LINE = re.compile(rb"([2-5][0-5][0-9])([ -]?)(.*)")
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class ReplyError(Exception):
    """The server's reply is not SMTP."""


class ReplyParser:
    # Reply lines are at most 512 octets (4.5.3.1.5); be generous, but not unbounded.
    MAX_LINE = 4096
    MAX_LINES = 1000

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code = 0

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more data arrives."""
        buf = self._buf
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > self.MAX_LINE:
                    raise ReplyError("reply line too long")
                return None
            if end > self.MAX_LINE:
                raise ReplyError("reply line too long")
            raw = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            match = _LINE.fullmatch(raw)
            if match is None:
                raise ReplyError(f"not an SMTP reply line: {raw[:80]!r}")
            code = int(match.group(1))
            if self._lines and code != self._code:
                raise ReplyError(f"reply code changed from {self._code} to {code} mid-reply")
            if match.group(2) == b"" and match.group(3):
                raise ReplyError(f"no space after the reply code: {raw[:80]!r}")
            self._code = code
            self._lines.append(match.group(3).decode("utf-8", "replace"))
            if len(self._lines) > self.MAX_LINES:
                raise ReplyError("too many lines in one reply")
            if match.group(2) != b"-":
                lines, self._lines = self._lines, []
                return _build(code, lines)

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _build(code: int, lines: list[str]) -> Reply:
    """Split a leading enhanced status code (RFC 2034) off every line that has one."""
    status = None
    match = _ENHANCED.match(lines[0])
    if match and match.group(1) == str(code)[0]:
        status = f"{match.group(1)}.{match.group(2)}.{match.group(3)}"
        prefix = len(status)
        lines = [line[prefix:].lstrip(" ") if line.startswith(status) else line for line in lines]
    return Reply(code, tuple(lines), status)
