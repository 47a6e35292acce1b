"""Sending with ``pigeon.client`` to real servers: Pigeon itself and Postfix's smtp-sink.

Pigeon's server is the ``server`` fixture (example.test, users alice and bob): what was sent
is read back from its Maildir. smtp-sink runs with ``-v``, so its log shows what it got.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest

from pigeon.client import (
    Attachment,
    SMTPClient,
    compose,
    send,
    send_async,
    to_bytes,
)
from pigeon.config import ExtensionsConfig
from tests.peers import SMTP_SINK, ScriptedPeer, SmtpSink, Transcript, esmtp_script
from tests.servers import ThreadedServer, make_config, read_maildir, wait_for

SENDER = "carol@remote.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"


def mailbox(server: ThreadedServer, user: str) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / "example.test" / user)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    text = body.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


# -- against Pigeon ---------------------------------------------------------------------------


def test_send_and_read_back_from_the_maildir(server: ThreadedServer) -> None:
    message = compose(
        sender=f"Carol <{SENDER}>",
        to=[ALICE],
        cc=[BOB],
        bcc=["postmaster@example.test"],
        subject="Grüße from the client",
        text="Hello Alice.\n.A line starting with a dot.\n",
    )
    result = send(message, server="127.0.0.1", port=server.port, timeout=10)
    assert result.all_accepted
    assert [r.recipient for r in result.recipients] == [ALICE, BOB, "postmaster@example.test"]
    for recipient in result.recipients:
        assert recipient.code == 250
        assert recipient.status == "2.0.0"
        assert "queued as" in recipient.text
        assert recipient.server == f"127.0.0.1:{server.port}"
    (raw,) = mailbox(server, "alice")
    delivered = parse(raw)
    assert delivered["Return-Path"] == f"<{SENDER}>"
    assert delivered["Subject"] == "Grüße from the client"
    assert delivered["Message-ID"] == message["Message-ID"]
    assert text_of(delivered) == "Hello Alice.\n.A line starting with a dot.\n"
    assert b"Bcc" not in raw
    assert b"postmaster@example.test" not in raw.split(b"\n\n", 1)[1]
    assert len(mailbox(server, "bob")) == 1
    assert len(mailbox(server, "postmaster")) == 1


def test_attachment_round_trip_is_byte_identical(server: ThreadedServer, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64 + os.urandom(50_000) + b"\r\n.\r\n\x00\n.\n"
    path = tmp_path / "blob.bin"
    path.write_bytes(payload)
    message = compose(
        sender=SENDER,
        to=[ALICE],
        subject="binary",
        text="attached\n",
        html="<p>attached</p>\n",
        attachments=[Attachment.from_path(path)],
    )
    result = send(message, server="127.0.0.1", port=server.port, timeout=10)
    assert result.all_accepted
    (raw,) = mailbox(server, "alice")
    (part,) = parse(raw).iter_attachments()
    assert part.get_filename() == "blob.bin"
    assert part.get_payload(decode=True) == payload


def test_per_recipient_results_with_one_unknown_user(server: ThreadedServer) -> None:
    message = compose(sender=SENDER, to=[ALICE, "nobody@example.test", BOB], text="hi\n")
    result = send(message, server="127.0.0.1", port=server.port, timeout=10)
    assert not result.all_accepted
    assert [r.recipient for r in result.accepted] == [ALICE, BOB]
    (refused,) = result.refused
    assert refused.recipient == "nobody@example.test"
    assert (refused.code, refused.status) == (550, "5.1.1")
    assert refused.permanent
    assert not refused.temporary
    assert "nobody@example.test" in refused.text
    assert refused.describe().startswith("<nobody@example.test>: 550 5.1.1 ")
    assert result["nobody@example.test"] is refused
    # The refusal hides nothing: the others got their copies.
    assert len(mailbox(server, "alice")) == 1
    assert len(mailbox(server, "bob")) == 1


def test_pipelining_mail_rcpt_and_data_go_out_before_any_reply(server: ThreadedServer) -> None:
    transcript = Transcript()
    message = compose(sender=SENDER, to=[ALICE, BOB], text="pipelined\n")
    result = send(message, server="127.0.0.1", port=server.port, transcript=transcript)
    assert result.all_accepted
    mail = transcript.index(">", "MAIL FROM:")
    first_reply = transcript.index("<", "", mail)
    sent_before_reply = [line for _, line in transcript.entries[mail:first_reply]]
    assert sent_before_reply == [
        f"MAIL FROM:<{SENDER}> SIZE={len(to_bytes(message))}",
        f"RCPT TO:<{ALICE}>",
        f"RCPT TO:<{BOB}>",
        "DATA",
    ]


async def two_messages(port: int, transcript: Transcript) -> list[bool]:
    results = []
    async with SMTPClient("127.0.0.1", port, timeout=10, transcript=transcript) as client:
        for index, recipient in enumerate((ALICE, BOB)):
            message = compose(sender=SENDER, to=[recipient], subject=f"number {index}")
            sent = await client.send(to_bytes(message), sender=SENDER, recipients=[recipient])
            results.append(sent.all_accepted)
    return results


def test_connection_reused_for_two_messages_with_rset_between(server: ThreadedServer) -> None:
    transcript = Transcript()
    assert asyncio.run(two_messages(server.port, transcript)) == [True, True]
    assert transcript.commands() == [
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "RSET",
        "MAIL",
        "RCPT",
        "DATA",
        "QUIT",
    ]
    rset = transcript.index(">", "RSET")
    assert transcript.entries[rset + 1] == ("<", "250 2.0.0 Ok")
    assert transcript.received[-1].startswith("221 ")
    assert parse(mailbox(server, "alice")[0])["Subject"] == "number 0"
    assert parse(mailbox(server, "bob")[0])["Subject"] == "number 1"


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    """Pigeon with a 2000-octet message size limit."""
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, message_size=2000))
    with ThreadedServer(config) as running:
        yield running


def test_too_large_message_is_refused_before_sending(small_server: ThreadedServer) -> None:
    transcript = Transcript()
    big = compose(sender=SENDER, to=[ALICE, BOB], text="x" * 3000)
    result = send(big, server="127.0.0.1", port=small_server.port, transcript=transcript)
    assert "250-SIZE 2000" in transcript.received
    assert [(r.code, r.status) for r in result.recipients] == [(552, "5.3.4")] * 2
    assert all(r.permanent for r in result.recipients)
    assert "SIZE" in result.recipients[0].text
    # Refused by the client itself: no transaction was started.
    assert transcript.commands() == ["EHLO", "QUIT"]
    assert mailbox(small_server, "alice") == []

    small = compose(sender=SENDER, to=[ALICE], text="fits\n")
    assert send(small, server="127.0.0.1", port=small_server.port).all_accepted


def test_8bit_body_is_declared_with_body_8bitmime(server: ThreadedServer) -> None:
    raw = "From: carol@remote.test\r\nTo: alice@example.test\r\nSubject: 8bit\r\n"
    raw += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    raw += "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, ½ €\r\n"
    data = raw.encode()
    transcript = Transcript()
    result = send(
        data, sender=SENDER, recipients=[ALICE], server="127.0.0.1", port=server.port,
        transcript=transcript,
    )  # fmt: skip
    assert result.all_accepted
    assert f">MAIL FROM:<{SENDER}> BODY=8BITMIME SIZE={len(data)}" in transcript.text()
    (delivered,) = mailbox(server, "alice")
    assert "Grüße, ½ €".encode() in delivered  # sent as is, not re-encoded


def test_7bit_message_is_not_declared_8bit(server: ThreadedServer) -> None:
    transcript = Transcript()
    message = compose(sender=SENDER, to=[ALICE], text="ü")  # quoted-printable: 7-bit
    send(message, server="127.0.0.1", port=server.port, transcript=transcript)
    (mail,) = [line for line in transcript.sent if line.startswith("MAIL")]
    assert "BODY=" not in mail


def test_chunking_requested_but_not_offered_falls_back_to_data(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, extensions=ExtensionsConfig(chunking=False, binarymime=False))
    transcript = Transcript()
    message = compose(sender=SENDER, to=[ALICE], text="no chunks here\n")
    with ThreadedServer(config) as server:
        result = send(
            message, server="127.0.0.1", port=server.port, chunking=True, transcript=transcript
        )
        assert result.all_accepted
        assert "CHUNKING" not in " ".join(transcript.received)
        assert "DATA" in transcript.commands()
        assert "BDAT" not in transcript.commands()
        assert len(mailbox(server, "alice")) == 1


def test_chunking_offered_by_pigeon_is_used(server: ThreadedServer) -> None:
    transcript = Transcript()
    message = compose(sender=SENDER, to=[ALICE], text="in chunks\n")
    result = send(
        message, server="127.0.0.1", port=server.port, chunking=True, transcript=transcript
    )
    assert result.all_accepted
    assert "BDAT" in transcript.commands()
    assert "DATA" not in transcript.commands()
    assert len(mailbox(server, "alice")) == 1
    assert b"in chunks" in mailbox(server, "alice")[0]


def test_send_async_from_a_running_loop(server: ThreadedServer) -> None:
    async def main() -> bool:
        message = compose(sender=SENDER, to=[ALICE], text="async\n")
        tasks = [
            send_async(message, server="127.0.0.1", port=server.port, timeout=10) for _ in range(3)
        ]
        return all(result.all_accepted for result in await asyncio.gather(*tasks))

    assert asyncio.run(main())
    wait_for(lambda: len(mailbox(server, "alice")) == 3, what="three messages")


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        (SENDER, ["not an address"]),
        (SENDER, ["alice@"]),
        (SENDER, ["@example.test"]),
        (SENDER, ["alice@exa mple.test"]),
        ("carol at remote", [ALICE]),
        (SENDER, []),
    ],
)
def test_invalid_addresses_are_refused_before_connecting(
    sender: str, recipients: list[str]
) -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        with pytest.raises(ValueError, match=r"address|recipients") as caught:
            send(
                b"Subject: x\r\n\r\nx\r\n",
                sender=sender,
                recipients=recipients,
                server="127.0.0.1",
                port=peer.port,
            )
        assert peer.accepted == 0
    if recipients:
        bad = recipients[0] if sender == SENDER else sender
        assert repr(bad) in str(caught.value)


def test_message_without_recipients_or_server_is_a_value_error() -> None:
    message = compose(sender=SENDER, text="nobody to send to")
    with pytest.raises(ValueError, match="recipients"):
        send(message, server="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="server"):
        send(compose(sender=SENDER, to=[ALICE]))


# -- against smtp-sink ------------------------------------------------------------------------

needs_sink = pytest.mark.skipif(
    SMTP_SINK is None, reason="Postfix's smtp-sink is not installed (apt-get install postfix)"
)


def sink_commands(sink: SmtpSink, count: int) -> list[str]:
    """smtp-sink's log of commands, once it shows ``count`` of them (the log lags a little)."""
    wait_for(lambda: len(sink.commands()) >= count, timeout=10, what=f"{count} commands logged")
    return sink.commands()


@needs_sink
@pytest.mark.peer
def test_smtp_sink_with_pipelining_gets_one_batch(tmp_path: Path) -> None:
    transcript = Transcript()
    with SmtpSink(tmp_path / "sink.log") as sink:
        message = compose(sender=SENDER, to=["one@sink.test", "two@sink.test"], text="x\n")
        result = send(message, server="127.0.0.1", port=sink.port, transcript=transcript)
        commands = sink_commands(sink, 6)
    assert result.all_accepted
    assert "250-PIPELINING" in transcript.received
    mail = transcript.index(">", "MAIL FROM:")
    first_reply = transcript.index("<", "", mail)
    assert [line.split(" ")[0] for _, line in transcript.entries[mail:first_reply]] == [
        "MAIL",
        "RCPT",
        "RCPT",
        "DATA",
    ]
    assert commands[1:5] == [
        f"MAIL FROM:<{SENDER}>",
        "RCPT TO:<one@sink.test>",
        "RCPT TO:<two@sink.test>",
        "DATA",
    ]


@needs_sink
@pytest.mark.peer
def test_smtp_sink_without_pipelining_gets_one_command_per_reply(tmp_path: Path) -> None:
    transcript = Transcript()
    # -p: do not announce PIPELINING (-P would fake a PIX firewall and turn off ESMTP too).
    with SmtpSink(tmp_path / "sink.log", "-p") as sink:
        message = compose(sender=SENDER, to=["one@sink.test", "two@sink.test"], text="x\n")
        result = send(message, server="127.0.0.1", port=sink.port, transcript=transcript)
    assert result.all_accepted
    assert "250-PIPELINING" not in transcript.received
    # Every command (but the message text) is followed by its reply before the next one.
    mail = transcript.index(">", "MAIL FROM:")
    data = transcript.index(">", "DATA", mail)
    directions = "".join(direction for direction, _ in transcript.entries[mail : data + 2])
    assert directions == "><><><><"


@needs_sink
@pytest.mark.peer
def test_smtp_sink_temporary_refusal_of_every_recipient(tmp_path: Path) -> None:
    transcript = Transcript()
    with SmtpSink(tmp_path / "sink.log", "-r", "RCPT") as sink:
        message = compose(sender=SENDER, to=["one@sink.test", "two@sink.test"], text="x\n")
        result = send(message, server="127.0.0.1", port=sink.port, transcript=transcript)
    assert [(r.code, r.status) for r in result.recipients] == [(450, "4.3.0")] * 2
    assert all(r.temporary for r in result.recipients)
    assert "DATA" not in transcript.commands()  # nothing to send it to


@needs_sink
@pytest.mark.peer
def test_smtp_sink_without_8bitmime_gets_a_7bit_body(tmp_path: Path) -> None:
    dump = tmp_path / "dump"
    raw = (
        "Subject: 8bit\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, ½ €\r\n"
    ).encode()
    transcript = Transcript()
    with SmtpSink(tmp_path / "sink.log", "-8", "-D", str(dump)) as sink:
        result = send(
            raw, sender=SENDER, recipients=["one@sink.test"], server="127.0.0.1",
            port=sink.port, transcript=transcript,
        )  # fmt: skip
        wait_for(lambda: dump.exists() and b"Subject" in dump.read_bytes(), what="the dump")
    assert result.all_accepted
    (mail,) = [line for line in transcript.sent if line.startswith("MAIL")]
    assert "BODY=8BITMIME" not in mail
    stored = dump.read_bytes()
    assert stored.isascii()
    # smtp-sink's own X-* and Received headers come first, then the message as sent.
    received = parse(stored)
    assert received["Content-Transfer-Encoding"] == "quoted-printable"
    assert text_of(received).rstrip("\n") == "Grüße, ½ €"  # the dump adds an empty line


@needs_sink
@pytest.mark.peer
def test_smtp_sink_chunking(tmp_path: Path) -> None:
    """BDAT when smtp-sink offers CHUNKING (Postfix 3.8 and later); DATA when not (3.7)."""
    transcript = Transcript()
    with SmtpSink(tmp_path / "sink.log") as sink:
        message = compose(sender=SENDER, to=["one@sink.test"], text=".dot\n")
        result = send(
            message, server="127.0.0.1", port=sink.port, chunking=True, transcript=transcript
        )
    assert result.all_accepted
    offered = any(line[4:].upper().startswith("CHUNKING") for line in transcript.received)
    expected = "BDAT" if offered else "DATA"
    assert expected in transcript.commands()
    assert ({"BDAT", "DATA"} - {expected}).isdisjoint(transcript.commands())


# -- BDAT against a peer that offers CHUNKING -------------------------------------------------


@pytest.mark.parametrize("size", [100, 3 * 1024 * 1024])
def test_bdat_sends_the_message_as_is_in_exact_chunks(size: int) -> None:
    chunks: list[bytes] = []
    body = (b".leading dot\r\n" + b"x" * 70 + b"\r\n") * (size // 86 + 1)
    data = b"Subject: chunks\r\n\r\n" + body
    transcript = Transcript()
    with ScriptedPeer(esmtp_script(("PIPELINING", "CHUNKING", "8BITMIME"), chunks=chunks)) as peer:
        result = send(
            data, sender=SENDER, recipients=[ALICE, BOB], server="127.0.0.1", port=peer.port,
            chunking=True, transcript=transcript,
        )  # fmt: skip
        received = [line for c in peer.connections for line in c.received]
    assert result.all_accepted
    assert b"".join(chunks) == data  # no dot-stuffing, no terminator
    assert "DATA" not in transcript.commands()
    bdat = [line for line in received if line.startswith(b"BDAT")]
    assert bdat[-1].endswith(b" LAST")
    assert [int(line.split()[1]) for line in bdat] == [len(c) for c in chunks]
    assert len(bdat) == (len(data) + (1 << 20) - 1) // (1 << 20)


def test_chunking_offered_but_not_requested_uses_data() -> None:
    messages: list[bytes] = []
    with ScriptedPeer(esmtp_script(("CHUNKING",), messages=messages)) as peer:
        result = send(
            b"Subject: x\r\n\r\n.dot\r\n", sender=SENDER, recipients=[ALICE],
            server="127.0.0.1", port=peer.port,
        )  # fmt: skip
    assert result.all_accepted
    assert messages == [b"Subject: x\r\n\r\n..dot\r\n"]


def test_nothing_8bit_reaches_a_7bit_server() -> None:
    messages: list[bytes] = []
    with ScriptedPeer(esmtp_script(("PIPELINING",), messages=messages)) as peer:
        send(
            "Subject: Grüße\r\n\r\nbody ü\r\n".encode(), sender=SENDER, recipients=[ALICE],
            server="127.0.0.1", port=peer.port,
        )  # fmt: skip
    (text,) = messages
    assert text.isascii()


def test_null_sender_for_bounces(server: ThreadedServer) -> None:
    transcript = Transcript()
    result = send(
        b"Subject: bounce\r\n\r\nundeliverable\r\n", sender="", recipients=[ALICE],
        server="127.0.0.1", port=server.port, transcript=transcript,
    )  # fmt: skip
    assert result.all_accepted
    assert any(line.startswith("MAIL FROM:<> ") for line in transcript.sent)
    (raw,) = mailbox(server, "alice")
    assert raw.startswith(b"Return-Path: <>")


def test_null_recipient_is_refused_before_connecting() -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        with pytest.raises(ValueError, match="address"):
            send(b"x\r\n", sender="", recipients=[""], server="127.0.0.1", port=peer.port)
        assert peer.accepted == 0
