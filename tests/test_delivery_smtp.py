"""The outbound SMTP agent against real peers, with a real DNS server on loopback.

Linux answers all of 127/8, so the DNS server (``tests.dns_server``) names exchangers at
127.0.0.2 and 127.0.0.3, and every peer listens on one shared port there: the agent's
``port=``. Pigeon itself (``ThreadedServer``) is the receiving MTA that keeps what it gets;
Postfix's smtp-sink refuses at chosen stages; scripted raw peers misbehave precisely;
aiosmtpd is the relay host with AUTH. Nothing leaves the machine, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.asyncresolver
import pytest

from pigeon.client import TLSMode
from pigeon.config import DomainConfig, ListenerConfig
from pigeon.delivery.result import DeliveryResult, Outcome
from pigeon.delivery.smtp import SmtpAgent
from pigeon.dns import make_resolver
from pigeon.queue.envelope import Envelope
from tests.dns_server import DNSServer, Records
from tests.peers import (
    SMTP_SINK,
    AiosmtpdPeer,
    PeerConnection,
    RecordingHandler,
    ScriptedPeer,
    SinkAt,
    TestCA,
    port_is_closed,
    resource_warnings,
)
from tests.servers import ThreadedServer, make_config, read_maildir

SENDER = "carol@origin.test"
ALICE = "alice@dest.test"
BOB = "bob@dest.test"
HOSTNAME = "out.origin.test"  # what the agent says in EHLO
USERS = {"relayuser": "relay-secret"}

MESSAGE = (
    b"From: Carol <carol@origin.test>\r\n"
    b"To: Alice <alice@dest.test>\r\n"
    b"Subject: over the wire\r\n"
    b"\r\n"
    b"Hello from the outbound agent.\r\n"
    b".a line that starts with a dot\r\n"
)

needs_sink = pytest.mark.skipif(SMTP_SINK is None, reason="Postfix's smtp-sink is not installed")


# -- peers on a chosen address --------------------------------------------------------------------
class PeerAt(ScriptedPeer):
    """A ``ScriptedPeer`` on a given host and port: every exchanger shares the agent's port."""

    def __init__(self, script: Callable[[PeerConnection], None], host: str, port: int) -> None:
        super().__init__(script, host=host)
        self._listener.close()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(8)
        listener.settimeout(0.05)
        self._listener, self.port = listener, port


def shared_port() -> int:
    """A port free on both 127.0.0.2 and 127.0.0.3 a moment ago."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind(("127.0.0.2", 0))
            port: int = first.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind(("127.0.0.3", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no port free on both 127.0.0.2 and 127.0.0.3")


def smtp_script(
    *,
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
    on: dict[bytes, Callable[[PeerConnection, bytes], bool]] | None = None,
    messages: list[bytes] | None = None,
    after_message: Callable[[PeerConnection], bool] | None = None,
) -> Callable[[PeerConnection], None]:
    """A plain ESMTP server; ``on[VERB](peer, line)`` replaces the answer to VERB and returns
    False to end the connection. ``after_message`` runs after each 250 to the final dot."""
    handlers = on or {}

    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.dest.test ESMTP\r\n")
        while True:
            line = peer.line()
            verb = line.split(b" ", 1)[0].upper()
            if verb in handlers:
                if not handlers[verb](peer, line):
                    return
            elif verb == b"EHLO":
                lines = [b"peer.dest.test", *(e.encode() for e in extensions)]
                peer.send(
                    b"".join(
                        b"250" + (b" " if i == len(lines) - 1 else b"-") + text + b"\r\n"
                        for i, text in enumerate(lines)
                    )
                )
            elif verb == b"DATA":
                peer.send(b"354 go ahead\r\n")
                text = peer.until_dot()
                if messages is not None:
                    messages.append(text)
                peer.send(b"250 2.0.0 Ok: queued as PEER1\r\n")
                if after_message is not None and not after_message(peer):
                    return
            elif verb == b"QUIT":
                peer.send(b"221 2.0.0 Bye\r\n")
                return
            else:
                peer.send(b"250 2.0.0 Ok\r\n")

    return script


# -- fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture
def pigeon(tmp_path: Path) -> Iterator[ThreadedServer]:
    """Pigeon on 127.0.0.3 (free port) taking mail for dest.test (alice, bob)."""
    config = replace(
        make_config(tmp_path / "data"),
        listen=(ListenerConfig(address="127.0.0.3:0"),),
        domains={"dest.test": DomainConfig(users=("alice", "bob"))},
    )
    with ThreadedServer(config) as running:
        yield running


def resolver_for(dns_server: DNSServer) -> dns.asyncresolver.Resolver:
    resolver = make_resolver((dns_server.nameserver,), timeout=5)
    assert resolver is not None
    return resolver


def envelope(*recipients: str) -> Envelope:
    return Envelope(sender=SENDER, recipients=recipients)


def deliver(
    agent: SmtpAgent, recipients: list[str], domain: str = "dest.test", body: bytes = MESSAGE
) -> list[DeliveryResult]:
    """One delivery; also checks that it left no socket or transport open."""
    with resource_warnings() as leaks:
        results = asyncio.run(
            agent.deliver(domain, recipients, envelope=envelope(*recipients), body=body)
        )
    assert leaks == []
    assert [r.recipient for r in results] == recipients
    return results


def mx_agent(dns_server: DNSServer | None, port: int, **settings: Any) -> SmtpAgent:
    settings.setdefault("timeout", 5.0)
    resolver = None if dns_server is None else resolver_for(dns_server)
    return SmtpAgent(hostname=HOSTNAME, resolver=resolver, port=port, **settings)


def maildir(server: ThreadedServer, user: str) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / "dest.test" / user)


def outcomes(results: list[DeliveryResult]) -> list[tuple[Outcome, str]]:
    return [(r.outcome, r.status) for r in results]


TWO_EXCHANGERS: Records = {
    ("dest.test", "MX"): ["20 mx2.dest.test.", "10 mx1.dest.test."],
    ("mx1.dest.test", "A"): "127.0.0.2",
    ("mx2.dest.test", "A"): "127.0.0.3",
}


# -- the route --------------------------------------------------------------------------------
def test_delivers_to_the_lowest_preference_exchanger(pigeon: ThreadedServer) -> None:
    records: Records = {
        ("dest.test", "MX"): ["20 backup.dest.test.", "10 primary.dest.test."],
        ("primary.dest.test", "A"): "127.0.0.3",  # Pigeon
        ("backup.dest.test", "A"): "127.0.0.2",  # a peer that must not be used
    }
    with (
        DNSServer(records) as dns_server,
        PeerAt(smtp_script(), "127.0.0.2", pigeon.port) as backup,
    ):
        results = deliver(mx_agent(dns_server, pigeon.port), [ALICE])
        queried = {q.name for q in dns_server.queries}
    (alice,) = results
    assert alice.outcome is Outcome.DELIVERED
    assert alice.status.startswith("2.")
    assert alice.detail.startswith("primary.dest.test[127.0.0.3] said: 250 ")
    assert alice.detail.endswith("(in reply to end of DATA command)")
    assert backup.accepted == 0
    assert "backup.dest.test" not in queried  # addresses are looked up only when needed
    (stored,) = maildir(pigeon, "alice")
    assert b"Return-Path: <carol@origin.test>" in stored
    assert b"Hello from the outbound agent." in stored
    assert b"\n.a line that starts with a dot" in stored  # dot-stuffed and unstuffed


def test_refused_connection_moves_to_the_next_exchanger(pigeon: ThreadedServer) -> None:
    assert port_is_closed("127.0.0.2", pigeon.port)
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        (alice,) = deliver(mx_agent(dns_server, pigeon.port), [ALICE])
    assert alice.outcome is Outcome.DELIVERED
    assert alice.detail.startswith("mx2.dest.test[127.0.0.3] said: 250 ")
    assert len(maildir(pigeon, "alice")) == 1


@needs_sink
@pytest.mark.peer
def test_4xx_greeting_moves_to_the_next_exchanger(pigeon: ThreadedServer, tmp_path: Path) -> None:
    refusing = SinkAt(
        tmp_path / "sink.log", "127.0.0.2", pigeon.port, "-r", "CONNECT", "-b", "421 4.3.2 busy"
    )
    with DNSServer(TWO_EXCHANGERS) as dns_server, refusing as sink:
        (alice,) = deliver(mx_agent(dns_server, pigeon.port), [ALICE])
        log = sink.log()
    assert alice.outcome is Outcome.DELIVERED
    assert alice.detail.startswith("mx2.dest.test[127.0.0.3] said: 250 ")
    assert log.count("smtp-sink: connect") == 2  # the start-up probe, then the agent
    assert len(maildir(pigeon, "alice")) == 1


@needs_sink
@pytest.mark.peer
def test_refusal_at_every_greeting_defers_with_the_greeting(tmp_path: Path) -> None:
    port = shared_port()
    records: Records = {
        ("dest.test", "MX"): "10 mx1.dest.test.",
        ("mx1.dest.test", "A"): "127.0.0.2",
    }
    options = ("-f", "CONNECT", "-B", "554 5.7.1 go away")
    with (
        DNSServer(records) as dns_server,
        SinkAt(tmp_path / "sink.log", "127.0.0.2", port, *options),
    ):
        (alice,) = deliver(mx_agent(dns_server, port), [ALICE])
    # Postfix's smtp_skip_5xx_greeting: a 5xx greeting says "not this server", not "never".
    assert (alice.outcome, alice.status) == (Outcome.DEFERRED, "4.7.1")
    assert "554 5.7.1 go away" in alice.detail
    assert "mx1.dest.test[127.0.0.2]" in alice.detail


def test_every_exchanger_unreachable_defers_with_the_last_error() -> None:
    port = shared_port()
    assert port_is_closed("127.0.0.2", port)
    assert port_is_closed("127.0.0.3", port)
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        results = deliver(mx_agent(dns_server, port), [ALICE, BOB])
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.1")] * 2
    detail = results[0].detail
    assert detail.startswith("no mail exchanger of dest.test took the connection")
    assert "mx2.dest.test[127.0.0.3]" in detail  # the last one tried
    assert "cannot connect" in detail


def test_every_address_of_an_exchanger_is_tried(pigeon: ThreadedServer) -> None:
    records: Records = {
        ("dest.test", "MX"): "10 mx1.dest.test.",
        ("mx1.dest.test", "AAAA"): "::1",  # IPv6 first; nothing listens there
        ("mx1.dest.test", "A"): "127.0.0.3",
    }
    with DNSServer(records) as dns_server:
        (alice,) = deliver(mx_agent(dns_server, pigeon.port), [ALICE])
    assert alice.outcome is Outcome.DELIVERED
    assert alice.detail.startswith("mx1.dest.test[127.0.0.3] said: 250 ")


def test_no_mx_falls_back_to_the_domains_address(pigeon: ThreadedServer) -> None:
    with DNSServer({("dest.test", "A"): "127.0.0.3"}) as dns_server:
        (alice,) = deliver(mx_agent(dns_server, pigeon.port), [ALICE])
        queries = [(q.name, q.rdtype) for q in dns_server.queries]
    assert alice.outcome is Outcome.DELIVERED
    assert alice.detail.startswith("dest.test[127.0.0.3] said: 250 ")
    assert queries[0] == ("dest.test", "MX")
    assert ("dest.test", "A") in queries
    assert len(maildir(pigeon, "alice")) == 1


def test_no_mx_and_no_address_fails() -> None:
    records: Records = {("dest.test", "TXT"): '"v=spf1 -all"'}  # the name exists, no mail
    with DNSServer(records) as dns_server:
        results = deliver(mx_agent(dns_server, shared_port()), [ALICE, BOB])
    assert outcomes(results) == [(Outcome.FAILED, "5.4.4")] * 2
    assert (
        results[0].detail == "domain dest.test has no mail exchanger (MX) and no address (A/AAAA)"
    )


def test_exchangers_without_addresses_fail() -> None:
    records: Records = {("dest.test", "MX"): ["10 ghost.dest.test.", "20 void.dest.test."]}
    with DNSServer(records) as dns_server:
        (alice,) = deliver(mx_agent(dns_server, shared_port()), [ALICE])
    assert (alice.outcome, alice.status) == (Outcome.FAILED, "5.4.4")
    assert "ghost.dest.test: host not found" in alice.detail
    assert "void.dest.test" in alice.detail


def test_nonexistent_domain_fails() -> None:
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        (result,) = deliver(mx_agent(dns_server, shared_port()), ["x@nowhere.test"], "nowhere.test")
    assert (result.outcome, result.status) == (Outcome.FAILED, "5.1.2")
    assert "nowhere.test does not exist" in result.detail


def test_null_mx_fails_without_connecting() -> None:
    port = shared_port()
    records: Records = {("dest.test", "MX"): "0 .", ("dest.test", "A"): "127.0.0.2"}
    with DNSServer(records) as dns_server, PeerAt(smtp_script(), "127.0.0.2", port) as peer:
        results = deliver(mx_agent(dns_server, port), [ALICE, BOB])
        queries = [(q.name, q.rdtype) for q in dns_server.queries]
    assert outcomes(results) == [(Outcome.FAILED, "5.1.10")] * 2
    assert "null MX" in results[0].detail
    assert queries == [("dest.test", "MX")]
    assert peer.accepted == 0


def test_dns_server_failure_defers() -> None:
    with DNSServer(TWO_EXCHANGERS, rcode="SERVFAIL") as dns_server:
        results = deliver(mx_agent(dns_server, shared_port()), [ALICE, BOB])
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.3")] * 2
    assert "dest.test" in results[0].detail


def test_best_exchanger_being_this_host_is_a_loop() -> None:
    records: Records = {
        ("dest.test", "MX"): ["10 out.origin.test.", "20 mx2.dest.test."],
        ("out.origin.test", "A"): "127.0.0.2",
        ("mx2.dest.test", "A"): "127.0.0.3",
    }
    with DNSServer(records) as dns_server:
        (alice,) = deliver(mx_agent(dns_server, shared_port()), [ALICE])
        queried = [q.name for q in dns_server.queries]
    assert (alice.outcome, alice.status) == (Outcome.FAILED, "5.4.6")
    assert "loops back to myself" in alice.detail
    assert queried == ["dest.test"]


def test_without_a_resolver_nothing_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookups(*args: object, **kwargs: object) -> None:
        raise AssertionError("a DNS query was made")

    monkeypatch.setattr(dns.asyncresolver.Resolver, "resolve", no_lookups)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        results = deliver(mx_agent(None, shared_port()), [ALICE, BOB])
        assert dns_server.query_count == 0
    assert outcomes(results) == [(Outcome.DEFERRED, "4.3.5")] * 2
    assert "no DNS resolver configured" in results[0].detail


def test_domain_literal_needs_no_resolver() -> None:
    port = shared_port()
    messages: list[bytes] = []
    with PeerAt(smtp_script(messages=messages), "127.0.0.2", port):
        (result,) = deliver(mx_agent(None, port), ["postmaster@[127.0.0.2]"], "[127.0.0.2]")
    assert result.outcome is Outcome.DELIVERED
    assert result.detail.startswith("127.0.0.2[127.0.0.2] said: 250 2.0.0 Ok: queued as PEER1")
    assert len(messages) == 1


# -- per-recipient replies ----------------------------------------------------------------------
def test_one_recipient_refused_and_one_accepted_in_one_transaction(
    pigeon: ThreadedServer,
) -> None:
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        alice, nobody = deliver(mx_agent(dns_server, pigeon.port), [ALICE, "nobody@dest.test"])
    assert alice.outcome is Outcome.DELIVERED
    assert (nobody.outcome, nobody.status) == (Outcome.FAILED, "5.1.1")
    assert nobody.detail.startswith("mx2.dest.test[127.0.0.3] said: 550 5.1.1 ")
    assert nobody.detail.endswith("(in reply to RCPT TO command)")
    assert len(maildir(pigeon, "alice")) == 1


def test_unusable_address_fails_alone(pigeon: ThreadedServer) -> None:
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        bad, alice = deliver(mx_agent(dns_server, pigeon.port), ["no body@dest.test", ALICE])
    assert (bad.outcome, bad.status) == (Outcome.FAILED, "5.1.3")
    assert alice.outcome is Outcome.DELIVERED
    assert len(maildir(pigeon, "alice")) == 1


@needs_sink
@pytest.mark.peer
@pytest.mark.parametrize(
    ("command", "name"), [("DATA", "DATA command"), (".", "end of DATA command")]
)
def test_temporary_refusal_of_the_message_defers_everyone(
    tmp_path: Path, command: str, name: str
) -> None:
    port = shared_port()
    records: Records = {
        ("dest.test", "MX"): "10 mx1.dest.test.",
        ("mx1.dest.test", "A"): "127.0.0.2",
    }
    options = ("-r", command, "-b", "451 4.3.0 try later")
    with (
        DNSServer(records) as dns_server,
        SinkAt(tmp_path / "sink.log", "127.0.0.2", port, *options),
    ):
        results = deliver(mx_agent(dns_server, port), [ALICE, BOB])
    assert outcomes(results) == [(Outcome.DEFERRED, "4.3.0")] * 2
    assert results[0].detail == (
        f"mx1.dest.test[127.0.0.2] said: 451 4.3.0 try later (in reply to {name})"
    )


@needs_sink
@pytest.mark.peer
def test_reply_without_enhanced_code_gets_one_from_its_class(tmp_path: Path) -> None:
    port = shared_port()
    records: Records = {
        ("dest.test", "MX"): "10 mx1.dest.test.",
        ("mx1.dest.test", "A"): "127.0.0.2",
    }
    options = ("-f", "RCPT", "-B", "550 no such user here")
    with (
        DNSServer(records) as dns_server,
        SinkAt(tmp_path / "sink.log", "127.0.0.2", port, *options),
    ):
        (alice,) = deliver(mx_agent(dns_server, port), [ALICE])
    assert (alice.outcome, alice.status) == (Outcome.FAILED, "5.0.0")
    assert alice.detail.endswith("said: 550 no such user here (in reply to RCPT TO command)")


# -- peers that misbehave -----------------------------------------------------------------------
ONE_EXCHANGER: Records = {
    ("dest.test", "MX"): "10 mx1.dest.test.",
    ("mx1.dest.test", "A"): "127.0.0.2",
}


Handler = Callable[[PeerConnection, bytes], bool]


def misbehave(on: dict[bytes, Handler], **settings: Any) -> list[DeliveryResult]:
    port = shared_port()
    with DNSServer(ONE_EXCHANGER) as dns_server, PeerAt(smtp_script(on=on), "127.0.0.2", port):
        return deliver(mx_agent(dns_server, port, **settings), [ALICE, BOB])


def test_garbage_after_the_message_defers() -> None:
    def garbage(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"354 go ahead\r\n")
        peer.until_dot()
        peer.send(b"250-queued, and now\r\nsomething that is not SMTP\r\n")
        return False

    results = misbehave({b"DATA": garbage})
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.2")] * 2
    detail = results[0].detail
    assert detail.startswith(
        "conversation with mx1.dest.test[127.0.0.2] failed at DATA while sending end of data"
    )
    assert "may be delivered twice" in detail
    assert "garbage" in detail


def test_garbage_for_a_recipient_defers() -> None:
    def garbage(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"250-2.1.5 ok\r\n\x00\x1b[31mnot a reply\r\n")
        return False

    results = misbehave({b"RCPT": garbage})
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.2")] * 2
    assert "failed at RCPT" in results[0].detail
    assert "\x00" not in results[0].detail
    assert "\x1b" not in results[0].detail


def test_connection_dropped_mid_data_defers() -> None:
    def drop(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"354 go ahead\r\n")
        peer.line()  # the first line of the message, then a reset
        peer.reset()
        return False

    results = misbehave({b"DATA": drop})
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.2")] * 2
    assert "mx1.dest.test[127.0.0.2]" in results[0].detail
    assert "DATA" in results[0].detail


def test_peer_that_never_answers_the_message_defers() -> None:
    def stall(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"354 go ahead\r\n")
        peer.until_dot()
        peer.stall()
        return False

    results = misbehave({b"DATA": stall}, timeout=1.0)
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.2")] * 2
    assert "did not answer within 1s" in results[0].detail
    assert "may be delivered twice" in results[0].detail


def test_peer_that_never_greets_is_skipped_then_deferred() -> None:
    port = shared_port()
    with (
        DNSServer(ONE_EXCHANGER) as dns_server,
        PeerAt(lambda peer: peer.stall(), "127.0.0.2", port) as peer,
    ):
        results = deliver(mx_agent(dns_server, port, timeout=1.0), [ALICE])
    assert peer.accepted == 1
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.1")]
    assert "greeting" in results[0].detail
    assert "did not answer" in results[0].detail


def test_data_answered_250_is_not_a_delivery() -> None:
    def no_354(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"250 2.0.0 sure\r\n")
        return True

    results = misbehave({b"DATA": no_354})
    assert outcomes(results) == [(Outcome.DEFERRED, "4.5.0")] * 2
    assert "(in reply to DATA command) without receiving the message" in results[0].detail


def test_broken_starttls_falls_back_to_plain_text() -> None:
    def refuse(peer: PeerConnection, line: bytes) -> bool:
        peer.send(b"454 4.7.0 TLS not available due to local problem\r\n")
        return True

    port = shared_port()
    messages: list[bytes] = []
    script = smtp_script(
        extensions=("PIPELINING", "STARTTLS"), on={b"STARTTLS": refuse}, messages=messages
    )
    with DNSServer(ONE_EXCHANGER) as dns_server, PeerAt(script, "127.0.0.2", port) as peer:
        (alice,) = deliver(mx_agent(dns_server, port), [ALICE])
    assert alice.outcome is Outcome.DELIVERED
    assert peer.accepted == 2  # the TLS attempt, then plain text
    assert len(messages) == 1


# -- TLS and the relay host ---------------------------------------------------------------------
class TLSRecordingHandler(RecordingHandler):
    """Also records, per message, whether the session was encrypted."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encrypted: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.encrypted.append(session.ssl is not None)
        return await super().handle_DATA(server, session, envelope)


def test_opportunistic_starttls_to_an_exchanger_is_unverified() -> None:
    ca = TestCA()  # the agent does not trust it: opportunistic TLS takes any certificate
    handler = TLSRecordingHandler()
    records: Records = {("dest.test", "MX"): "10 mx.dest.test.", ("mx.dest.test", "A"): "127.0.0.1"}
    with (
        AiosmtpdPeer(handler, tls_context=ca.server_context()) as peer,
        DNSServer(records) as dns_server,
    ):
        (alice,) = deliver(mx_agent(dns_server, peer.port), [ALICE])
    assert alice.outcome is Outcome.DELIVERED
    assert handler.encrypted == [True]


def relay_agent(
    dns_server: DNSServer, port: int, *, password: str = USERS["relayuser"], **settings: Any
) -> SmtpAgent:
    return SmtpAgent(
        hostname=HOSTNAME,
        resolver=resolver_for(dns_server),
        relayhost=f"127.0.0.1:{port}",
        relay_username="relayuser",
        relay_password=password,
        **{"timeout": 5.0, **settings},
    )


def test_relayhost_with_auth_is_used_instead_of_mx() -> None:
    handler = RecordingHandler(users=USERS)
    with (
        AiosmtpdPeer(handler, authenticator=handler.authenticator, auth_require_tls=False) as peer,
        DNSServer(TWO_EXCHANGERS) as dns_server,
    ):
        results = deliver(relay_agent(dns_server, peer.port), [ALICE, BOB])
        assert dns_server.query_count == 0
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    assert results[0].detail.startswith("127.0.0.1[127.0.0.1] said: 250 2.0.0 ")
    assert handler.logins == [("PLAIN", "relayuser")]
    ((sender, rcpts, content, _),) = handler.messages
    assert (sender, rcpts) == (SENDER, [ALICE, BOB])
    assert b"Hello from the outbound agent." in content


def test_relayhost_refusing_the_credentials_defers() -> None:
    handler = RecordingHandler(users=USERS)
    with (
        AiosmtpdPeer(handler, authenticator=handler.authenticator, auth_require_tls=False) as peer,
        DNSServer(TWO_EXCHANGERS) as dns_server,
    ):
        results = deliver(relay_agent(dns_server, peer.port, password="wrong"), [ALICE])
    assert outcomes(results) == [(Outcome.DEFERRED, "4.7.0")]
    assert "refused the credentials" in results[0].detail
    assert handler.messages == []


@pytest.mark.parametrize(("mode", "status"), [("starttls", "4.7.4"), ("implicit", "4.7.5")])
def test_relayhost_without_the_required_tls_defers(mode: TLSMode, status: str) -> None:
    handler = RecordingHandler(users=USERS)
    with (
        AiosmtpdPeer(handler, authenticator=handler.authenticator, auth_require_tls=False) as peer,
        DNSServer(TWO_EXCHANGERS) as dns_server,
    ):
        results = deliver(relay_agent(dns_server, peer.port, relay_tls=mode, timeout=2.0), [ALICE])
    assert outcomes(results) == [(Outcome.DEFERRED, status)]
    assert f"relayhost 127.0.0.1:{peer.port}" in results[0].detail
    assert handler.messages == []


def test_relayhost_with_verified_starttls() -> None:
    ca = TestCA()
    handler = TLSRecordingHandler(users=USERS)
    with (
        AiosmtpdPeer(
            handler, tls_context=ca.server_context(), authenticator=handler.authenticator
        ) as peer,
        DNSServer(TWO_EXCHANGERS) as dns_server,
    ):
        agent = relay_agent(
            dns_server,
            peer.port,
            relay_tls="starttls",
            ssl_context=ca.client_context(),
            verify=True,
        )
        (alice,) = deliver(agent, [ALICE])
    assert alice.outcome is Outcome.DELIVERED
    assert handler.encrypted == [True]
    assert handler.logins == [("PLAIN", "relayuser")]


def test_relay_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="relayhost"):
        SmtpAgent(hostname=HOSTNAME, resolver=None, relayhost=":587")
    with pytest.raises(ValueError, match="relayhost"):
        SmtpAgent(hostname=HOSTNAME, resolver=None, relayhost="relay.test:99999")
    with pytest.raises(ValueError, match="go together"):
        SmtpAgent(hostname=HOSTNAME, resolver=None, relayhost="relay.test", relay_username="u")
    with pytest.raises(ValueError, match="hostname"):
        SmtpAgent(hostname="two words", resolver=None)


def test_relayhost_name_without_a_resolver_defers() -> None:
    agent = SmtpAgent(hostname=HOSTNAME, resolver=None, relayhost="relay.origin.test:587")
    results = deliver(agent, [ALICE])
    assert outcomes(results) == [(Outcome.DEFERRED, "4.3.5")]
    assert "no DNS resolver configured" in results[0].detail


# -- one connection for several messages --------------------------------------------------------
@needs_sink
@pytest.mark.peer
def test_session_carries_several_messages_over_one_connection(tmp_path: Path) -> None:
    port = shared_port()

    async def two_messages(agent: SmtpAgent) -> list[list[DeliveryResult]]:
        async with agent.session("dest.test") as session:
            first = await session.deliver([ALICE], envelope=envelope(ALICE), body=MESSAGE)
            second = await session.deliver(
                [BOB, ALICE], envelope=envelope(BOB, ALICE), body=MESSAGE
            )
        return [first, second]

    with (
        DNSServer(ONE_EXCHANGER) as dns_server,
        SinkAt(tmp_path / "sink.log", "127.0.0.2", port) as sink,
        resource_warnings() as leaks,
    ):
        first, second = asyncio.run(two_messages(mx_agent(dns_server, port)))
        # smtp-sink logs the QUIT once it has answered it; wait for that line.
        deadline = time.monotonic() + 10
        while "QUIT" not in sink.commands() and time.monotonic() < deadline:
            time.sleep(0.02)
        commands = [c.split(" ", 1)[0].upper() for c in sink.commands()]
        sessions = sink.sessions()
    assert leaks == []
    assert [r.outcome for r in first + second] == [Outcome.DELIVERED] * 3
    assert sessions == 1
    assert commands == [
        "EHLO", "MAIL", "RCPT", "DATA", ".",
        "RSET", "MAIL", "RCPT", "RCPT", "DATA", ".",
        "QUIT",
    ]  # fmt: skip


def test_session_reconnects_when_the_idle_connection_was_closed() -> None:
    port = shared_port()
    messages: list[bytes] = []
    # The peer hangs up after each message, as a server with a short idle timeout would.
    script = smtp_script(messages=messages, after_message=lambda peer: False)

    async def two_messages(agent: SmtpAgent) -> list[DeliveryResult]:
        async with agent.session("dest.test") as session:
            first = await session.deliver([ALICE], envelope=envelope(ALICE), body=MESSAGE)
            second = await session.deliver([BOB], envelope=envelope(BOB), body=MESSAGE)
        return first + second

    with (
        DNSServer(ONE_EXCHANGER) as dns_server,
        PeerAt(script, "127.0.0.2", port) as peer,
        resource_warnings() as leaks,
    ):
        results = asyncio.run(two_messages(mx_agent(dns_server, port)))
    assert leaks == []
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 2
    assert peer.accepted == 2
    assert len(messages) == 2


def test_session_tries_an_unreachable_destination_once() -> None:
    port = shared_port()

    async def two_messages(agent: SmtpAgent) -> list[DeliveryResult]:
        async with agent.session("dest.test") as session:
            first = await session.deliver([ALICE], envelope=envelope(ALICE), body=MESSAGE)
            second = await session.deliver([BOB], envelope=envelope(BOB), body=MESSAGE)
        return first + second

    with DNSServer(TWO_EXCHANGERS) as dns_server:
        results = asyncio.run(two_messages(mx_agent(dns_server, port)))
        mx_queries = [q for q in dns_server.queries if q.rdtype == "MX"]
    assert outcomes(results) == [(Outcome.DEFERRED, "4.4.1")] * 2
    assert len(mx_queries) == 1
