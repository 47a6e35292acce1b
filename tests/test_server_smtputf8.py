"""SMTPUTF8 (RFC 6531): internationalized addresses in, stored, delivered, and sent on."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pigeon.config import DomainConfig, ExtensionsConfig
from pigeon.delivery.result import Outcome
from pigeon.delivery.smtp import SmtpAgent
from pigeon.directory import Directory
from pigeon.queue.envelope import Envelope
from pigeon.smtp import domain_key, parse_mailbox
from tests.peers import ScriptedPeer, esmtp_script
from tests.servers import ThreadedServer, make_config, read_maildir
from tests.test_server_sessions import Client

JORAN = "jöran@bücher.test"
USER = "用户@例子.test"
MESSAGE = (
    "From: jöran@bücher.test\r\nTo: 用户@例子.test\r\nSubject: 你好\r\n\r\nHallå!\r\n".encode()
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    config = make_config(tmp_path / "data")
    domains = {
        **config.domains,
        "bücher.test": DomainConfig(users=("jöran",)),
        "例子.test": DomainConfig(users=("用户",)),
    }
    with ThreadedServer(replace(config, domains=domains)) as running:
        yield running


def mailbox(server: ThreadedServer, domain: str, user: str) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / domain / user)


def test_internationalized_address_end_to_end_with_smtplib(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        refused = client.sendmail(JORAN, [USER], MESSAGE, mail_options=["SMTPUTF8"])
    assert refused == {}
    (message,) = mailbox(server, "例子.test", "用户")
    text = message.decode("utf-8")
    assert "Return-Path: <jöran@bücher.test>" in text
    assert "Delivered-To: 用户@例子.test" in text
    assert "with UTF8SMTP id" in text
    assert "for <用户@例子.test>;" in text
    assert "Subject: 你好" in text


def test_a_label_and_u_label_reach_the_same_mailbox(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        refused = client.sendmail(
            "bob@example.test", ["jöran@xn--bcher-kva.test", "JÖRAN@BÜCHER.test"],
            b"Subject: twice\r\n\r\nhi\r\n", mail_options=["SMTPUTF8"],
        )  # fmt: skip
    assert refused == {}
    # Two recipients, one mailbox: a copy for each, both in the U-label domain's directory.
    assert len(mailbox(server, "bücher.test", "jöran")) == 2
    assert sorted(p.name for p in server.config.mail_dir.iterdir()) == ["bücher.test"]


def test_utf8_addresses_without_smtputf8_are_553(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    mail = "MAIL FROM:<jöran@bücher.test>".encode()
    assert client.command(mail) == b"553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    assert client.command(b"MAIL FROM:<bob@example.test>").startswith(b"250")
    rcpt = "RCPT TO:<用户@例子.test>".encode()
    assert client.command(rcpt) == b"553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    assert client.command(b"RSET").startswith(b"250")
    # Non-ASCII anywhere else in a command is still garbage.
    assert client.command("NOOP héllo".encode()).startswith(b"500 5.5.2")
    assert client.command(b"MAIL FROM:<bob@example.test> SMTPUTF8=yes").startswith(b"501")
    client.close()


def test_smtputf8_not_offered_when_turned_off(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path / "data"), extensions=ExtensionsConfig(smtputf8=False))
    with ThreadedServer(config) as server:
        client = Client(server.address)
        client.reply()
        assert b"SMTPUTF8" not in client.command(b"EHLO client.test")
        answer = client.command(b"MAIL FROM:<bob@example.test> SMTPUTF8")
        assert answer.startswith(b"555 5.5.4")
        assert client.command("MAIL FROM:<jöran@bücher.test>".encode()).startswith(b"500")
        client.close()


def test_envelope_keeps_utf8_as_utf8() -> None:
    envelope = Envelope(sender=JORAN, recipients=(USER,), mail_parameters=(("SMTPUTF8", None),))
    data = envelope.to_json()
    assert "用户@例子.test".encode() in data
    assert Envelope.from_json(data) == envelope


def test_directory_compares_domains_after_idna(tmp_path: Path) -> None:
    directory = Directory({"bücher.test": DomainConfig(users=("jöran",))}, mail_root=tmp_path)
    assert directory.serves("xn--bcher-kva.test")
    assert directory.serves("BÜCHER.test.")
    decomposed = "jo\u0308ran"  # "ö" as o and a combining diaeresis
    for local, domain in [("jöran", "xn--bcher-kva.test"), (decomposed, "bücher.test")]:
        mailbox = directory.find(local, domain)
        assert mailbox is not None
        assert mailbox.path == tmp_path / "bücher.test" / "jöran"
    assert domain_key("例子.test") == "xn--fsqu00a.test"


@pytest.mark.parametrize(
    ("text", "utf8", "ok"),
    [
        ("jöran@bücher.test", True, True),
        ("jöran@bücher.test", False, False),
        ('"jö ran"@例子.test', True, True),
        ("a@xn--bcher-kva.test", False, True),
        ("a@bü--cher.test", True, False),  # not valid IDNA
        ("a@" + "ü" * 70 + ".test", True, False),  # label too long as an A-label
    ],
)
def test_parse_mailbox_utf8(text: str, utf8: bool, ok: bool) -> None:
    assert (parse_mailbox(text, utf8=utf8) is not None) is ok


def test_relay_sends_smtputf8_to_a_peer_that_offers_it(server: ThreadedServer) -> None:
    envelope = Envelope(sender=JORAN, recipients=(USER,), mail_parameters=(("SMTPUTF8", None),))
    agent = SmtpAgent(
        hostname="relay.test", resolver=None, relayhost=f"127.0.0.1:{server.port}", timeout=10
    )
    results = asyncio.run(agent.deliver("例子.test", [USER], envelope=envelope, body=MESSAGE))
    assert [r.outcome for r in results] == [Outcome.DELIVERED]
    assert len(mailbox(server, "例子.test", "用户")) == 1


def test_relay_to_a_peer_without_smtputf8_fails_those_recipients() -> None:
    messages: list[bytes] = []
    script = esmtp_script(("PIPELINING", "8BITMIME"), messages=messages)
    with ScriptedPeer(script) as peer:
        agent = SmtpAgent(
            hostname="relay.test", resolver=None, relayhost=f"127.0.0.1:{peer.port}", timeout=5
        )
        envelope = Envelope(sender="bob@example.test", recipients=(USER, "a@dest.test"))
        results = asyncio.run(
            agent.deliver("dest.test", [USER, "a@dest.test"], envelope=envelope, body=MESSAGE)
        )
    assert [(r.outcome, r.status) for r in results] == [
        (Outcome.FAILED, "5.6.7"),
        (Outcome.DELIVERED, "2.0.0"),
    ]
    assert len(messages) == 1
