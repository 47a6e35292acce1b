"""Reading the Maildirs as a mail reader would: list, search, parse, delete, mark read.

Mailboxes are ``<mail_dir>/<domain>/<user>/`` (``pigeon.directory``). A message's id is its
Maildir unique name (the file name up to ``:2,``), which stays the same when a reader moves it
from ``new/`` to ``cur/`` or changes its flags. "Read" is the Maildir flag ``S`` in ``cur/``,
which mutt and Dovecot understand too.

Everything here is blocking file work: the web app calls it from worker threads. Message
files never change once delivered (only their names do), so the few headers a list shows are
read once per message and kept in a bounded cache.
"""

from __future__ import annotations

import email.policy
import email.utils
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

__all__ = [
    "Attachment",
    "MailboxRef",
    "Mailboxes",
    "MessageQuery",
    "MessageSummary",
    "ParsedMessage",
    "UnknownMailbox",
    "UnknownMessage",
]

# Names a mailbox directory may have (the directory's rule for catch-all local parts, and a
# domain's labels): nothing that could leave mail_dir.
_NAME = re.compile(r"[a-z0-9_][a-z0-9._+=-]{0,253}", re.IGNORECASE)
_HEADER_LIMIT = 256 * 1024
_CACHE_SIZE = 20000
_SCAN_LIMIT = 50000  # messages examined by one search, at most


class UnknownMailbox(LookupError):
    pass


class UnknownMessage(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class MailboxRef:
    domain: str
    user: str
    path: Path

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """A message file as found in new/ or cur/."""

    key: str
    path: Path
    flags: str
    mtime: float
    size: int


@dataclass(frozen=True, slots=True)
class _Headers:
    sender: str
    to: str
    subject: str
    date: datetime | None


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: str
    sender: str
    to: str
    subject: str
    date: datetime | None  # the Date header; None when missing or unreadable
    received: datetime  # when it reached the mailbox
    size: int
    seen: bool


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Search terms: each given one must match (case aside); ``text`` matches any of sender,
    recipients and subject."""

    text: str = ""
    sender: str = ""
    to: str = ""
    subject: str = ""
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before

    @property
    def empty(self) -> bool:
        return not (self.text or self.sender or self.to or self.subject or self.since or self.until)


@dataclass(frozen=True, slots=True)
class Attachment:
    index: int  # among the message's leaf parts: stable, used in URLs
    filename: str
    content_type: str
    size: int
    content_id: str
    part: EmailMessage = field(repr=False, compare=False)

    def payload(self) -> bytes:
        data = self.part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    summary: MessageSummary
    headers: list[tuple[str, str]]
    text: str | None
    html: str | None
    attachments: list[Attachment]
    message_id: str
    cc: str


class Mailboxes:
    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self._cache: OrderedDict[tuple[Path, str], _Headers] = OrderedDict()
        self._lock = threading.Lock()

    # -- mailboxes ----------------------------------------------------------------------------
    def all(self) -> list[MailboxRef]:
        """Every Maildir under mail_dir, by domain and user."""
        found = []
        if not self.mail_dir.is_dir():
            return []
        for domain in sorted(os.listdir(self.mail_dir)):
            ref_dir = self.mail_dir / domain
            if not _NAME.fullmatch(domain) or not ref_dir.is_dir():
                continue
            for user in sorted(os.listdir(ref_dir)):
                ref = self._ref(user, domain)
                if ref is not None:
                    found.append(ref)
        return found

    def get(self, address: str, *, must_exist: bool = True) -> MailboxRef:
        """The mailbox of ``user@domain``; raises ``UnknownMailbox``. With ``must_exist``
        false, a mailbox that has had no mail yet (no Maildir) is an empty one."""
        user, at, domain = address.lower().rpartition("@")
        ref = self._ref(user, domain, must_exist=must_exist) if at else None
        if ref is None:
            raise UnknownMailbox(address)
        return ref

    def _ref(self, user: str, domain: str, *, must_exist: bool = True) -> MailboxRef | None:
        if not (_NAME.fullmatch(user) and _NAME.fullmatch(domain)) or ".." in user + domain:
            return None
        path = self.mail_dir / domain / user
        if must_exist and not all((path / sub).is_dir() for sub in ("new", "cur")):
            return None
        return MailboxRef(domain, user, path)

    def counts(self, ref: MailboxRef) -> tuple[int, int]:
        """(messages, unread)."""
        entries = list(self._entries(ref))
        return len(entries), sum(1 for e in entries if "S" not in e.flags)

    def version(self, ref: MailboxRef) -> tuple[int, int]:
        """Changes whenever a message arrives, goes, or is moved: the mtimes of new/ and cur/
        (in nanoseconds), a cheap thing to poll."""
        try:
            return ((ref.path / "new").stat().st_mtime_ns, (ref.path / "cur").stat().st_mtime_ns)
        except OSError:
            return (0, 0)

    # -- listing ------------------------------------------------------------------------------
    def _entries(self, ref: MailboxRef) -> Iterator[_Entry]:
        for sub in ("new", "cur"):
            try:
                scan = os.scandir(ref.path / sub)
            except OSError:
                continue
            with scan:
                for item in scan:
                    if item.name.startswith("."):
                        continue
                    key, _, info = item.name.partition(":")
                    flags = info[2:] if info.startswith("2,") else ""
                    try:
                        stat = item.stat()
                    except OSError:
                        continue  # moved or deleted meanwhile
                    yield _Entry(key, Path(item.path), flags, stat.st_mtime, stat.st_size)

    def summaries(
        self, ref: MailboxRef, query: MessageQuery, *, offset: int = 0, limit: int = 50
    ) -> tuple[int, list[MessageSummary]]:
        """(how many match, the page of them from ``offset``), newest first."""
        entries = sorted(self._entries(ref), key=lambda e: (e.mtime, e.key), reverse=True)
        if query.empty:
            page = entries[offset : offset + limit]
            return len(entries), [self._summary(e) for e in page]
        matching = [
            summary
            for summary in (self._summary(e) for e in entries[:_SCAN_LIMIT])
            if _matches(summary, query)
        ]
        return len(matching), matching[offset : offset + limit]

    def _summary(self, entry: _Entry) -> MessageSummary:
        headers = self._headers(entry)
        return MessageSummary(
            id=entry.key,
            sender=headers.sender,
            to=headers.to,
            subject=headers.subject,
            date=headers.date,
            received=datetime.fromtimestamp(entry.mtime, UTC),
            size=entry.size,
            seen="S" in entry.flags,
        )

    def _headers(self, entry: _Entry) -> _Headers:
        cache_key = (entry.path.parent.parent, entry.key)
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        try:
            with entry.path.open("rb") as file:
                head = _read_header(file.read(_HEADER_LIMIT))
        except OSError:
            head = b""
        message = BytesParser(policy=email.policy.default).parsebytes(head, headersonly=True)
        headers = _Headers(
            sender=_header(message, "From"),
            to=", ".join(filter(None, (_header(message, "To"), _header(message, "Cc")))),
            subject=_header(message, "Subject"),
            date=_date(message),
        )
        with self._lock:
            self._cache[cache_key] = headers
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return headers

    # -- one message --------------------------------------------------------------------------
    def _find(self, ref: MailboxRef, key: str) -> _Entry:
        if not key or "/" in key or "\0" in key or key.startswith("."):
            raise UnknownMessage(key)
        for entry in self._entries(ref):
            if entry.key == key:
                return entry
        raise UnknownMessage(key)

    def raw(self, ref: MailboxRef, key: str) -> bytes:
        entry = self._find(ref, key)
        try:
            return entry.path.read_bytes()
        except FileNotFoundError:
            raise UnknownMessage(key) from None

    def message(self, ref: MailboxRef, key: str) -> ParsedMessage:
        entry = self._find(ref, key)
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            raise UnknownMessage(key) from None
        parsed = BytesParser(policy=email.policy.default).parsebytes(data)
        assert isinstance(parsed, EmailMessage)
        text_part = parsed.get_body(preferencelist=("plain",))
        html_part = parsed.get_body(preferencelist=("html",))
        leaves = [part for part in parsed.walk() if not part.is_multipart()]
        attachments = []
        for index, part in enumerate(leaves):
            if part is text_part or part is html_part:
                continue
            assert isinstance(part, EmailMessage)
            payload = part.get_payload(decode=True)
            attachments.append(
                Attachment(
                    index=index,
                    filename=part.get_filename() or f"part-{index}",
                    content_type=part.get_content_type(),
                    size=len(payload) if isinstance(payload, bytes) else 0,
                    content_id=str(part.get("Content-ID", "")).strip("<> "),
                    part=part,
                )
            )
        return ParsedMessage(
            summary=self._summary(entry),
            headers=[(name, _text(value)) for name, value in parsed.items()],
            text=_content(text_part),
            html=_content(html_part),
            attachments=attachments,
            message_id=_header(parsed, "Message-ID"),
            cc=_header(parsed, "Cc"),
        )

    def attachment(self, ref: MailboxRef, key: str, index: int) -> Attachment:
        for attachment in self.message(ref, key).attachments:
            if attachment.index == index:
                return attachment
        raise UnknownMessage(f"{key} has no attachment {index}")

    def delete(self, ref: MailboxRef, key: str) -> None:
        entry = self._find(ref, key)
        try:
            entry.path.unlink()
        except FileNotFoundError:
            raise UnknownMessage(key) from None

    def set_seen(self, ref: MailboxRef, key: str, seen: bool = True) -> None:
        """Add or remove the flag S, moving the message to cur/ as a mail reader does."""
        entry = self._find(ref, key)
        flags = set(entry.flags)
        if seen:
            flags.add("S")
        else:
            flags.discard("S")
        target = ref.path / "cur" / f"{key}:2,{''.join(sorted(flags))}"
        if target != entry.path:
            try:
                os.rename(entry.path, target)
            except FileNotFoundError:
                raise UnknownMessage(key) from None


def _read_header(data: bytes) -> bytes:
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(separator)
        if end >= 0:
            return data[: end + len(separator)]
    return data


def _text(value: object) -> str:
    """A header value as one line of text (folded lines unfolded)."""
    return " ".join(str(value).split())


def _header(message: EmailMessage, name: str) -> str:
    try:
        value = message.get(name)
    except (ValueError, IndexError, TypeError):  # a header the parser cannot make sense of
        return ""
    return "" if value is None else _text(value)


def _date(message: EmailMessage) -> datetime | None:
    raw = _header(message, "Date")
    if not raw:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _content(part: object) -> str | None:
    if not isinstance(part, EmailMessage):
        return None
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset, broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else None


def _matches(summary: MessageSummary, query: MessageQuery) -> bool:
    def has(haystack: str, needle: str) -> bool:
        return not needle or needle.lower() in haystack.lower()

    if query.text and not any(
        has(field, query.text) for field in (summary.sender, summary.to, summary.subject)
    ):
        return False
    if not (
        has(summary.sender, query.sender)
        and has(summary.to, query.to)
        and has(summary.subject, query.subject)
    ):
        return False
    if query.since is not None and summary.received < query.since:
        return False
    return not (query.until is not None and summary.received >= query.until)
