"""Composing messages: headers, Bcc, alternatives, attachments, and 7-bit safety."""

from __future__ import annotations

import email
import email.policy
import email.utils
import re
from email.message import EmailMessage, Message
from pathlib import Path

import pytest

from pigeon.client import Attachment, compose, envelope_recipients, make_7bit, to_bytes

ALL_BYTES = bytes(range(256))


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def content(part: object) -> str:
    """A text part's decoded content with line ends as Python writes them."""
    assert isinstance(part, EmailMessage)
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def wire_lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")[:-1]
    assert b"\n" not in b"".join(lines), "bare LF on the wire"
    assert b"\r" not in b"".join(lines), "bare CR on the wire"
    return lines


def test_headers_are_filled_in() -> None:
    message = compose(
        sender="Alice <alice@example.test>",
        to=["bob@example.test", "Carol <carol@remote.test>"],
        cc=["dave@example.test"],
        reply_to="replies@example.test",
        subject="Hello",
        text="Hi there.\n",
        headers={"X-Mailer": "pigeon-tests", "List-Id": "<tests.example.test>"},
    )
    data = to_bytes(message)
    parsed = parse(data)
    assert parsed["From"] == "Alice <alice@example.test>"
    assert parsed["To"] == "bob@example.test, Carol <carol@remote.test>"
    assert parsed["Cc"] == "dave@example.test"
    assert parsed["Reply-To"] == "replies@example.test"
    assert parsed["Subject"] == "Hello"
    assert parsed["X-Mailer"] == "pigeon-tests"
    assert parsed["List-Id"] == "<tests.example.test>"
    # RFC 5322 3.6.1: Date is required; it must parse, with a zone.
    date = email.utils.parsedate_to_datetime(str(parsed["Date"]))
    assert date.tzinfo is not None
    # RFC 5322 3.6.4: msg-id = "<" id-left "@" id-right ">"; the right side is the sender's.
    assert re.fullmatch(r"<[^<>@\s]+@example\.test>", str(parsed["Message-ID"]))
    assert parsed.get_content_type() == "text/plain"
    assert content(parsed) == "Hi there.\n"
    for line in wire_lines(data):
        assert len(line) <= 998


def test_message_ids_are_unique_and_domain_can_be_chosen() -> None:
    first = compose(sender="a@example.test", to=["b@example.test"])
    second = compose(sender="a@example.test", to=["b@example.test"])
    assert first["Message-ID"] != second["Message-ID"]
    chosen = compose(sender="a@example.test", to=["b@x.test"], message_id_domain="ids.test")
    assert str(chosen["Message-ID"]).endswith("@ids.test>")


def test_bcc_is_in_the_envelope_but_not_on_the_wire() -> None:
    message = compose(
        sender="alice@example.test",
        to=["Bob <bob@example.test>"],
        cc=["carol@example.test", "bob@example.test"],
        bcc=["secret@example.test", "hidden@remote.test"],
        subject="s",
        text="t",
    )
    assert envelope_recipients(message) == [
        "bob@example.test",
        "carol@example.test",
        "secret@example.test",
        "hidden@remote.test",
    ]
    data = to_bytes(message)
    assert b"Bcc" not in data
    assert b"secret@" not in data
    assert b"hidden@" not in data
    # to_bytes works on a copy: the message keeps its Bcc for a later envelope.
    assert message["Bcc"] is not None


def test_envelope_recipients_of_a_message_with_none() -> None:
    assert envelope_recipients(compose(sender="a@example.test")) == []


def test_html_alternative() -> None:
    message = compose(
        sender="a@example.test",
        to=["b@example.test"],
        subject="both",
        text="plain words\n",
        html="<p>rich <b>words</b></p>\n",
    )
    parsed = parse(to_bytes(message))
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert isinstance(parts[0], EmailMessage)
    assert isinstance(parts[1], EmailMessage)
    assert content(parts[0]) == "plain words\n"
    assert content(parts[1]) == "<p>rich <b>words</b></p>\n"
    body = parsed.get_body(preferencelist=("html",))
    assert body is not None
    assert body.get_content_type() == "text/html"


def test_attachment_of_every_byte_value_survives() -> None:
    message = compose(
        sender="a@example.test",
        to=["b@example.test"],
        subject="bytes",
        text="see attached\n",
        html="<p>see attached</p>\n",
        attachments=[
            Attachment("all.bin", ALL_BYTES),
            Attachment("picture.png", b"\x89PNG\r\n\x1a\n" + ALL_BYTES),
            Attachment("data", ALL_BYTES[::-1], content_type="application/x-custom"),
        ],
    )
    data = to_bytes(message)
    assert data.isascii()
    wire_lines(data)
    parsed = parse(data)
    assert parsed.get_content_type() == "multipart/mixed"
    attachments = list(parsed.iter_attachments())
    assert [a.get_filename() for a in attachments] == ["all.bin", "picture.png", "data"]
    assert [a.get_content_type() for a in attachments] == [
        "application/octet-stream",
        "image/png",
        "application/x-custom",
    ]
    assert [a.get_payload(decode=True) for a in attachments] == [
        ALL_BYTES,
        b"\x89PNG\r\n\x1a\n" + ALL_BYTES,
        ALL_BYTES[::-1],
    ]
    body = parsed.get_body(preferencelist=("plain",))
    assert body is not None
    assert isinstance(body, EmailMessage)
    assert content(body) == "see attached\n"


def test_attachment_from_path(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4\n" + ALL_BYTES)
    attachment = Attachment.from_path(path)
    assert attachment.filename == "report.pdf"
    message = compose(sender="a@example.test", to=["b@example.test"], attachments=[attachment])
    (part,) = parse(to_bytes(message)).iter_attachments()
    assert part.get_content_type() == "application/pdf"
    assert part.get_payload(decode=True) == b"%PDF-1.4\n" + ALL_BYTES


def test_non_ascii_subject_names_and_body_are_7bit_on_the_wire() -> None:
    subject = "Grüße aus Köln, 東京"
    text = "Ça va? Ünïcödé body, and a long line: " + "ж" * 200 + "\n"
    message = compose(
        sender="Zoë <zoe@example.test>",
        to=["Jürgen <juergen@example.test>"],
        subject=subject,
        text=text,
        html="<p>ß</p>\n",
    )
    data = to_bytes(message)
    assert data.isascii()
    assert b"=?utf-8?" in data  # RFC 2047 encoded words
    for line in wire_lines(data):
        assert len(line) <= 998
    parsed = parse(data)
    assert parsed["Subject"] == subject
    assert parsed["From"].addresses[0].display_name == "Zoë"
    plain = parsed.get_body(preferencelist=("plain",))
    assert isinstance(plain, EmailMessage)
    assert content(plain) == text
    assert plain["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_utf8_headers_when_the_server_speaks_smtputf8() -> None:
    message = compose(sender="a@example.test", to=["b@example.test"], subject="Grüße", text="x")
    data = to_bytes(message, utf8=True)
    assert "Subject: Grüße".encode() in data


# -- make_7bit --------------------------------------------------------------------------------

EIGHT_BIT_TEXT = (
    b"From: a@example.test\r\n"
    b"To: b@example.test\r\n"
    b"Subject: plain 8bit\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n" + "Grüße, wörld.\r\nSecond line: ½ € ✓\r\n".encode()
)


def test_make_7bit_reencodes_an_8bit_text_body() -> None:
    out = make_7bit(EIGHT_BIT_TEXT)
    assert out.isascii()
    wire_lines(out)
    parsed = parse(out)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(parsed) == "Grüße, wörld.\nSecond line: ½ € ✓\n"
    assert parsed["Subject"] == "plain 8bit"


def test_make_7bit_reencodes_8bit_parts_of_a_multipart() -> None:
    binary = bytes(b for b in ALL_BYTES if b not in (0x0A, 0x0D))
    data = (
        b"From: a@example.test\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XyZ"\r\n'
        b"\r\n"
        b"--XyZ\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"caf\xe9\r\n"
        b"--XyZ\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n" + binary + b"\r\n"
        b"--XyZ\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
        b"\r\n"
        b"already ascii\r\n"
        b"--XyZ--\r\n"
    )
    out = make_7bit(data)
    assert out.isascii()
    wire_lines(out)
    parts = list(parse(out).iter_parts())
    assert [p.get("Content-Transfer-Encoding") for p in parts] == [
        "quoted-printable",
        "base64",
        None,
    ]
    assert isinstance(parts[0], EmailMessage)
    assert content(parts[0]) == "café"
    assert parts[1].get_payload(decode=True) == binary
    assert isinstance(parts[2], Message)
    assert parts[2].get_payload() == "already ascii"


def test_make_7bit_leaves_a_7bit_message_alone() -> None:
    message = compose(sender="a@example.test", to=["b@example.test"], subject="s", text="ü")
    data = to_bytes(message)
    assert content(parse(make_7bit(data))) == content(parse(data)) == "ü\n"


@pytest.mark.parametrize("subject", ["ascii", "Grüße"])
def test_compose_output_never_needs_make_7bit(subject: str) -> None:
    message = compose(
        sender="a@example.test",
        to=["b@example.test"],
        subject=subject,
        text="ü" * 1000,
        attachments=[Attachment("x.bin", ALL_BYTES * 10)],
    )
    assert to_bytes(message).isascii()


@pytest.mark.parametrize("address", ["bob@", "Bob <bob@>"])
def test_compose_refuses_an_address_without_a_domain_with_value_error(address: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        compose(sender="a@example.test", to=[address])


def test_an_unparsable_recipient_is_not_silently_dropped() -> None:
    with pytest.raises(ValueError, match=r"bob@@x\.test"):
        compose(sender="a@example.test", to=["alice@example.test"], cc=["bob@@x.test"])
    # A message made elsewhere (sendmail -t reads one) is refused too, naming the header.
    message = EmailMessage()
    message["To"] = "alice@example.test"
    message["Cc"] = "bob@@x.test"
    with pytest.raises(ValueError, match=r"^Cc: "):
        envelope_recipients(message)
