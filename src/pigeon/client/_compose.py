"""Composing messages with the standard library's ``email`` package."""

from __future__ import annotations

import email.policy
import email.utils
import mimetypes
from collections.abc import Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from email import encoders
from email.message import EmailMessage, Message
from email.parser import BytesParser
from pathlib import Path

from pigeon.smtp import parse_mailbox

__all__ = [
    "Attachment",
    "compose",
    "envelope_recipients",
    "make_7bit",
    "needs_8bit",
    "to_bytes",
]

# RFC 5322 output, CRLF line ends, lines folded at 78; never raw 8-bit in headers unless
# the caller asked for SMTPUTF8.
_POLICY = email.policy.SMTP


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content: bytes
    content_type: str | None = None  # guessed from the file name when None

    @classmethod
    def from_path(cls, path: Path) -> Attachment:
        return cls(path.name, path.read_bytes())


def compose(
    *,
    sender: str,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    subject: str = "",
    text: str = "",
    html: str | None = None,
    attachments: Iterable[Attachment] = (),
    headers: Mapping[str, str] | None = None,
    message_id_domain: str | None = None,
) -> EmailMessage:
    """A complete message: Date and Message-ID are filled in.

    Bcc recipients are kept out of the headers (they go only in the envelope: use
    ``envelope_recipients``), as every mail client does."""
    for field, values in (("From", [sender]), ("To", to), ("Cc", cc), ("Bcc", bcc)):
        for value in values:
            _check_header_address(field, value)
    if reply_to is not None:
        _check_header_address("Reply-To", reply_to)
    # cte_type 7bit: set_content picks quoted-printable or base64 for non-ASCII text, so a
    # composed message travels through any server, 8BITMIME or not.
    message = EmailMessage(policy=_POLICY.clone(cte_type="7bit"))
    message["From"] = sender
    if to:
        message["To"] = ", ".join(to)
    if cc:
        message["Cc"] = ", ".join(cc)
    if reply_to:
        message["Reply-To"] = reply_to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(localtime=True)
    domain = message_id_domain or _domain_of(sender) or "pigeon.invalid"
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for attachment in attachments:
        content_type = attachment.content_type or (
            mimetypes.guess_type(attachment.filename)[0] or "application/octet-stream"
        )
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(
            attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename
        )
    # Keep Bcc in the object so envelope_recipients() sees it; to_bytes() leaves it out.
    if bcc:
        message["Bcc"] = ", ".join(bcc)
    return message


def envelope_recipients(message: EmailMessage | Message) -> list[str]:
    """Every address in To, Cc and Bcc (what ``sendmail -t`` sends to), without duplicates.

    Raises ValueError naming the header when an address cannot be read: sending to the
    others without a word would lose that recipient silently."""
    seen: dict[str, None] = {}
    for name in ("To", "Cc", "Bcc"):
        for value in message.get_all(name, []):
            for _, address in email.utils.getaddresses([str(value)]):
                if not address or parse_mailbox(address) is None:
                    raise ValueError(f"{name}: cannot read an address in {str(value)!r}")
                seen.setdefault(address, None)
    return list(seen)


def to_bytes(message: EmailMessage, *, utf8: bool = False) -> bytes:
    """The message as it goes on the wire: Bcc removed, CRLF line ends.

    Without ``utf8`` (SMTPUTF8) non-ASCII headers are RFC 2047 encoded."""
    copy = deepcopy(message)
    del copy["Bcc"]
    return copy.as_bytes(policy=_POLICY.clone(utf8=utf8))


def make_7bit(data: bytes) -> bytes:
    """Re-encode every 8-bit body part as quoted-printable (text) or base64 (the rest), and
    every raw UTF-8 header as RFC 2047 encoded words, for a server that offers neither
    8BITMIME nor SMTPUTF8 (RFC 6152 section 3)."""
    message = BytesParser(policy=_POLICY).parsebytes(data)
    for part in message.walk():
        for name, value in list(part.items()):
            text = str(value)
            if not text.isascii():
                # Undo the parser's surrogate escapes, then let the policy encode the header.
                raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                part.replace_header(name, raw)
    for part in message.walk():
        if part.is_multipart():
            continue
        payload = part.get_payload()
        if not isinstance(payload, str) or payload.isascii():
            continue
        cte = str(part.get("Content-Transfer-Encoding", "")).lower()
        if cte in ("quoted-printable", "base64"):
            continue  # already 7-bit on the wire; non-ASCII here would be a broken part
        del part["Content-Transfer-Encoding"]
        if part.get_content_maintype() == "text":
            encoders.encode_quopri(part)
        else:
            encoders.encode_base64(part)
    return message.as_bytes(policy=_POLICY)


def _check_header_address(field: str, value: str) -> None:
    """``value`` must be one address, bare or as ``Name <address>``; say what is wrong."""
    _, address = email.utils.parseaddr(value)
    if not address or parse_mailbox(address) is None:
        raise ValueError(f"{field}: not a valid address: {value!r} (expected local-part@domain)")


def needs_8bit(data: bytes) -> bool:
    return not data.isascii()


def _domain_of(address: str) -> str:
    _, mailbox = email.utils.parseaddr(address)
    return mailbox.rpartition("@")[2]
