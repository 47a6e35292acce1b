"""End to end with Python's smtplib: a real socket, the spool, and Maildir read back."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from pigeon.config import DomainConfig
from tests.servers import ThreadedServer, make_config, read_maildir


def mailbox_of(server: ThreadedServer, user: str, domain: str = "example.test") -> Path:
    return server.config.mail_dir / domain / user


def test_message_reaches_maildir_with_trace_headers(server: ThreadedServer) -> None:
    body = (
        "From: Carol <carol@remote.test>\r\nTo: alice@example.test\r\nSubject: Hi\r\n\r\nHello.\r\n"
    )
    with smtplib.SMTP(*server.address, timeout=10) as client:
        code, banner = client.ehlo("client.test")
        assert code == 250
        assert b"PIPELINING" in banner
        assert b"ENHANCEDSTATUSCODES" in banner
        refused = client.sendmail("carol@remote.test", ["alice@example.test"], body)
        assert refused == {}
    server.wait_idle()
    (raw,) = read_maildir(mailbox_of(server, "alice"))
    lines = raw.split(b"\n")
    assert lines[0] == b"Return-Path: <carol@remote.test>"
    assert lines[1] == b"Delivered-To: alice@example.test"
    assert lines[2].startswith(b"Received: from client.test (unknown [127.0.0.1])")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "Hi"
    assert "by mx.example.test (Pigeon) with ESMTP id" in message["Received"]
    assert "for <alice@example.test>" in message["Received"]
    assert message.get_content() == "Hello.\n"


def test_queue_id_in_250_is_the_id_in_received(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("carol@remote.test")
        client.rcpt("bob@example.test")
        code, text = client.data(b"Subject: id\r\n\r\nbody\r\n")
    assert code == 250
    assert text.startswith(b"2.0.0 Ok: queued as ")
    queue_id = text.rsplit(b" ", 1)[1].decode()
    server.wait_idle()
    (raw,) = read_maildir(mailbox_of(server, "bob"))
    assert f"id {queue_id}".encode() in raw


def test_several_recipients_each_get_one_copy(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        refused = client.sendmail(
            "carol@remote.test",
            ["alice@example.test", "BOB@Example.Test", "postmaster@example.test"],
            b"Subject: many\r\n\r\nfor all\r\n",
        )
    assert refused == {}
    server.wait_idle()
    for user in ("alice", "bob", "postmaster"):
        (raw,) = read_maildir(mailbox_of(server, user))
        assert b"for all" in raw
    # Bcc privacy: with several recipients the Received line names none of them.
    assert b"for <" not in read_maildir(mailbox_of(server, "alice"))[0]


def test_unknown_user_and_relay_are_refused_and_others_delivered(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.mail("carol@remote.test")[0] == 250
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text) == (550, b"5.7.1 <victim@elsewhere.test>: Relay access denied")
        assert client.rcpt("alice@example.test")[0] == 250
        assert client.data(b"Subject: x\r\n\r\nx\r\n")[0] == 250
    server.wait_idle()
    assert len(read_maildir(mailbox_of(server, "alice"))) == 1
    assert not mailbox_of(server, "nobody").exists()


@pytest.mark.parametrize(
    "recipient",
    [
        "user%elsewhere.test@example.test",  # percent hack
        "elsewhere.test!user@example.test",  # bang path
        '"user@elsewhere.test"@example.test',  # quoted @
        "@example.test:user@elsewhere.test",  # source route to a remote mailbox
    ],
)
def test_relay_hidden_in_an_address_is_refused(server: ThreadedServer, recipient: str) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("carol@remote.test")
        code, text = client.docmd(f"RCPT TO:<{recipient}>")
    assert code == 550
    assert text.startswith(b"5.7.1")


def test_address_after_at_at_is_a_syntax_error_not_local(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("carol@remote.test")
        code, text = client.docmd("RCPT TO:<user@elsewhere.test@example.test>")
    assert (code, text[:5]) == (553, b"5.1.3")


def test_trusted_network_may_relay(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", trusted_networks=("127.0.0.0/8",))
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("alice@example.test")
        assert client.rcpt("someone@elsewhere.test")[0] == 250


def test_size_limit_declared_and_actual(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, message_size=2000))
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.esmtp_features["size"] == "2000"
        code, text = client.docmd("MAIL FROM:<a@remote.test> SIZE=5000")
        assert (code, text[:5]) == (552, b"5.3.4")
        client.mail("a@remote.test")
        client.rcpt("alice@example.test")
        code, text = client.data(b"Subject: big\r\n\r\n" + b"x" * 900 + b"\r\n" + b"y" * 900 * 3)
        assert (code, text[:5]) in {(552, b"5.3.4"), (554, b"5.6.0")}
        # The session goes on: a small message after the refused one is accepted.
        client.mail("a@remote.test")
        client.rcpt("alice@example.test")
        assert client.data(b"Subject: small\r\n\r\nok\r\n")[0] == 250
        server.wait_idle()
    messages = read_maildir(config.mail_dir / "example.test" / "alice")
    assert len(messages) == 1
    assert b"Subject: small" in messages[0]
    # Nothing of the refused message is left in the spool's temporary files.
    assert not any((config.spool_dir / "tmp").iterdir())


def test_exactly_too_big_by_one_octet(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, message_size=4000))
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("a@remote.test")
        client.rcpt("alice@example.test")
        # The limit counts the message as sent, before the Received header is added.
        lines = b"".join(b"y" * 98 + b"\r\n" for _ in range(40))
        assert len(lines) == 4000
        assert client.data(lines)[0] == 250
        client.mail("a@remote.test")
        client.rcpt("alice@example.test")
        assert client.data(lines + b"z\r\n")[0] == 552


def test_thousand_recipients(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, domains={"example.test": DomainConfig(catch_all=True)})
    recipients = [f"user{n}@example.test" for n in range(1000)]
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("a@remote.test")
        for recipient in recipients:
            assert client.rcpt(recipient)[0] == 250
        code, text = client.rcpt("one-too-many@example.test")
        assert (code, text[:5]) == (452, b"4.5.3")
        assert client.data(b"Subject: list\r\n\r\nhello\r\n")[0] == 250
        server.wait_idle(timeout=120)
    for name in ("user0", "user500", "user999"):
        assert len(read_maildir(config.mail_dir / "example.test" / name)) == 1


def test_pipelined_transaction_in_one_write(server: ThreadedServer) -> None:
    with socket.create_connection(server.address, timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        sock.sendall(
            b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        )
        replies = [reader.readline() for _ in range(5)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"550", b"250", b"354"]
        sock.sendall(b"Subject: p\r\n\r\n.dotted\r\n..\r\n.\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert reader.readline().startswith(b"221 2.0.0")
    server.wait_idle()
    (raw,) = read_maildir(mailbox_of(server, "alice"))
    assert raw.endswith(b"\n\ndotted\n.\n")


def test_message_id_and_body_survive_8bit(server: ThreadedServer) -> None:
    text = "Subject: caf\u00e9\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nna\u00efve\r\n"
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("8bitmime")
        client.mail("a@remote.test", ["BODY=8BITMIME"])
        client.rcpt("alice@example.test")
        assert client.data(text.encode("utf-8"))[0] == 250
    server.wait_idle()
    (raw,) = read_maildir(mailbox_of(server, "alice"))
    assert "na\u00efve".encode() in raw
