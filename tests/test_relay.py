"""Relaying end to end: Pigeon A takes mail from a trusted client, finds the destination's MX
through a DNS server on loopback, delivers to Pigeon B, and bounces what B refuses."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pigeon.config import DomainConfig, ListenerConfig
from tests.dns_server import DNSServer
from tests.servers import ThreadedServer, make_config, read_maildir, wait_for

RECORDS = {
    ("remote.test", "MX"): ["10 mx.remote.test."],
    ("mx.remote.test", "A"): ["127.0.0.3"],
    ("nomail.test", "MX"): ["0 ."],
}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[ThreadedServer, ThreadedServer]]:
    """(A, B): A relays for 127/8 and resolves through the test DNS server; B is remote.test."""
    b_config = replace(
        make_config(tmp_path / "b", hostname="mx.remote.test"),
        listen=(ListenerConfig(address="127.0.0.3:0"),),
        domains={"remote.test": DomainConfig(users=("dave",))},
    )
    with DNSServer(RECORDS) as dns_server, ThreadedServer(b_config) as b:
        a_config = make_config(
            tmp_path / "a",
            trusted_networks=("127.0.0.0/8",),
            resolver=(f"127.0.0.1:{dns_server.port}",),
        )
        with ThreadedServer(a_config, outbound_port=b.port) as a:
            yield a, b


def send(
    server: ThreadedServer, sender: str, recipients: list[str]
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        return client.sendmail(sender, recipients, b"Subject: across\r\n\r\nover the wire\r\n")


def report_of(raw: bytes) -> list[email.message.Message]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    status = [p for p in message.walk() if p.get_content_type() == "message/delivery-status"]
    payload = status[0].get_payload()
    assert isinstance(payload, list)
    return [block for block in payload if isinstance(block, email.message.Message)]


def test_relayed_message_reaches_the_other_server(
    relay: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = relay
    assert send(a, "alice@example.test", ["dave@remote.test"]) == {}
    dave = b.config.mail_dir / "remote.test" / "dave"
    wait_for(lambda: len(read_maildir(dave)) == 1, what="the relayed message at B")
    (raw,) = read_maildir(dave)
    assert b"over the wire" in raw
    # Two Received lines: B's on top of A's.
    assert raw.count(b"Received: from ") == 2
    assert b"by mx.example.test (Pigeon)" in raw


def test_refused_recipient_bounces_to_the_sender(
    relay: tuple[ThreadedServer, ThreadedServer],
) -> None:
    a, b = relay
    assert send(a, "alice@example.test", ["dave@remote.test", "nobody@remote.test"]) == {}
    alice = a.config.mail_dir / "example.test" / "alice"
    wait_for(lambda: len(read_maildir(alice)) == 1, what="the bounce at alice")
    _, block = report_of(read_maildir(alice)[0])
    assert block["Final-Recipient"] == "rfc822; nobody@remote.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.1.1"
    assert "mx.remote.test[127.0.0.3]" in block["Diagnostic-Code"]
    # The accepted recipient got it all the same.
    wait_for(lambda: len(read_maildir(b.config.mail_dir / "remote.test" / "dave")) == 1)


def test_null_mx_bounces_at_once(relay: tuple[ThreadedServer, ThreadedServer]) -> None:
    a, _ = relay
    assert send(a, "alice@example.test", ["someone@nomail.test"]) == {}
    alice = a.config.mail_dir / "example.test" / "alice"
    wait_for(lambda: len(read_maildir(alice)) == 1, what="the bounce at alice")
    _, block = report_of(read_maildir(alice)[0])
    assert block["Status"] == "5.1.10"


def test_unknown_domain_bounces(relay: tuple[ThreadedServer, ThreadedServer]) -> None:
    a, _ = relay
    assert send(a, "alice@example.test", ["someone@no-such-domain.test"]) == {}
    alice = a.config.mail_dir / "example.test" / "alice"
    wait_for(lambda: len(read_maildir(alice)) == 1, what="the bounce at alice")
    _, block = report_of(read_maildir(alice)[0])
    assert block["Status"] == "5.1.2"
