"""REQUIRETLS (RFC 8689): offered and accepted only under TLS, kept in the envelope, and
honoured on the way out (verified TLS to a peer that offers REQUIRETLS, or no delivery)."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pigeon.config import DomainConfig
from pigeon.delivery.result import DeliveryResult, Outcome
from pigeon.delivery.smtp import SmtpAgent
from pigeon.dns import make_resolver
from pigeon.queue.envelope import Envelope
from tests.dns_server import DNSServer
from tests.peers import AiosmtpdPeer, RecordingHandler, ScriptedPeer, TestCA, esmtp_script
from tests.servers import ThreadedServer, make_config, read_maildir, tls_config

ALICE = "alice@example.test"
BODY = b"Subject: secret\r\n\r\nFor TLS eyes only.\r\n"
REQUIRETLS = Envelope(
    sender="bob@origin.test", recipients=(ALICE,), mail_parameters=(("REQUIRETLS", None),)
)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def server(tmp_path: Path, ca: TestCA) -> Iterator[ThreadedServer]:
    """Pigeon with STARTTLS, recording the envelope of every message it stores."""
    config = make_config(tmp_path / "data", tls=tls_config(ca.cert, tmp_path / "tls"))
    with ThreadedServer(config) as running:
        yield running


def record_envelopes(server: ThreadedServer, monkeypatch: pytest.MonkeyPatch) -> list[Envelope]:
    spool = server.server.context.spool
    commit = spool.commit
    seen: list[Envelope] = []

    async def recording_commit(writer: Any, envelope: Envelope) -> Any:
        seen.append(envelope)
        return await commit(writer, envelope)

    monkeypatch.setattr(spool, "commit", recording_commit)
    return seen


def inbox(server: ThreadedServer) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / "example.test" / "alice")


def relay(port: int, ca: TestCA, envelope: Envelope = REQUIRETLS) -> list[DeliveryResult]:
    agent = SmtpAgent(
        hostname="relay.origin.test",
        resolver=None,
        relayhost=f"127.0.0.1:{port}",
        ssl_context=ca.client_context(),
        timeout=5,
    )
    return asyncio.run(agent.deliver("example.test", [ALICE], envelope=envelope, body=BODY))


def test_offered_and_accepted_only_under_tls(
    server: ThreadedServer, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelopes = record_envelopes(server, monkeypatch)
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("requiretls")
        code, _ = client.mail("bob@origin.test", ["REQUIRETLS"])
        assert code == 555
        client.rset()
        client.starttls(context=ca.client_context())
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        code, _ = client.mail("bob@origin.test", ["REQUIRETLS=yes"])
        assert code == 501
        assert client.sendmail("bob@origin.test", [ALICE], BODY, ["REQUIRETLS"]) == {}
    (envelope,) = envelopes
    assert ("REQUIRETLS", None) in envelope.mail_parameters
    assert len(inbox(server)) == 1


def test_not_offered_on_a_listener_without_tls(tmp_path: Path) -> None:
    server = ThreadedServer(make_config(tmp_path / "data"))
    with server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("requiretls")


def test_outbound_uses_verified_tls_and_passes_requiretls_on(
    server: ThreadedServer, ca: TestCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    envelopes = record_envelopes(server, monkeypatch)
    (result,) = relay(server.port, ca)
    assert result.outcome is Outcome.DELIVERED, result.detail
    (envelope,) = envelopes
    assert ("REQUIRETLS", None) in envelope.mail_parameters
    (message,) = inbox(server)
    assert b"with ESMTPS" in message


def test_outbound_refuses_a_certificate_it_cannot_verify(server: ThreadedServer) -> None:
    (result,) = relay(server.port, TestCA())  # trusts another CA
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.7.30")
    assert "REQUIRETLS" in result.detail
    assert inbox(server) == []


def test_outbound_refuses_a_peer_without_requiretls(ca: TestCA) -> None:
    handler = RecordingHandler()
    with AiosmtpdPeer(handler, tls_context=ca.server_context()) as peer:
        (result,) = relay(peer.port, ca)
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.7.30")
    assert "does not offer REQUIRETLS" in result.detail
    assert handler.messages == []


def test_outbound_refuses_a_peer_without_tls(ca: TestCA) -> None:
    messages: list[bytes] = []
    with ScriptedPeer(esmtp_script(("PIPELINING", "REQUIRETLS"), messages=messages)) as peer:
        (result,) = relay(peer.port, ca)
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.7.30")
    assert messages == []


def test_other_mail_still_goes_in_the_clear(ca: TestCA) -> None:
    messages: list[bytes] = []
    with ScriptedPeer(esmtp_script(("PIPELINING",), messages=messages)) as peer:
        plain = replace(REQUIRETLS, mail_parameters=())
        (result,) = relay(peer.port, ca, plain)
    assert result.outcome is Outcome.DELIVERED
    assert len(messages) == 1


# -- REQUIRETLS by MX: DNSSEC-validated MX records, or no delivery (RFC 8689 4.2.1) ------------
MX_RECORDS = {
    ("signed.test", "MX"): ["10 mx.signed.test."],
    ("mx.signed.test", "A"): ["127.0.0.1"],
    ("plain.test", "MX"): ["10 mx.plain.test."],
    ("mx.plain.test", "A"): ["127.0.0.1"],
}


@pytest.fixture
def exchanger(tmp_path: Path, ca: TestCA) -> Iterator[ThreadedServer]:
    """Pigeon as the exchanger of signed.test and plain.test, its certificate naming both."""
    cert = ca.ca.issue_cert("mx.signed.test", "mx.plain.test")
    config = make_config(
        tmp_path / "mx",
        tls=tls_config(cert, tmp_path / "mx-tls"),
        domains={
            "signed.test": DomainConfig(users=("alice",)),
            "plain.test": DomainConfig(users=("alice",)),
        },
    )
    with ThreadedServer(config) as running:
        yield running


def by_mx(exchanger: ThreadedServer, ca: TestCA, domain: str) -> DeliveryResult:
    with DNSServer(MX_RECORDS, signed=frozenset({"signed.test"})) as dns_server:
        resolver = make_resolver((dns_server.nameserver,))
        agent = SmtpAgent(
            hostname="relay.origin.test",
            resolver=resolver,
            port=exchanger.port,
            ssl_context=ca.client_context(),
            timeout=5,
        )
        envelope = replace(REQUIRETLS, recipients=(f"alice@{domain}",))
        (result,) = asyncio.run(
            agent.deliver(domain, [f"alice@{domain}"], envelope=envelope, body=BODY)
        )
    return result


def test_requiretls_goes_to_an_exchanger_named_by_dnssec_validated_mx(
    exchanger: ThreadedServer, ca: TestCA
) -> None:
    result = by_mx(exchanger, ca, "signed.test")
    assert result.outcome is Outcome.DELIVERED, result.detail
    exchanger.wait_idle()
    (message,) = read_maildir(exchanger.config.mail_dir / "signed.test" / "alice")
    assert b"with ESMTPS" in message


def test_requiretls_is_returned_when_the_mx_is_not_validated(
    exchanger: ThreadedServer, ca: TestCA
) -> None:
    result = by_mx(exchanger, ca, "plain.test")
    assert (result.outcome, result.status) == (Outcome.FAILED, "5.7.30")
    assert "not DNSSEC-validated" in result.detail
    exchanger.wait_idle()
    assert read_maildir(exchanger.config.mail_dir / "plain.test" / "alice") == []
