"""TLS and AUTH against aiosmtpd with a test CA (trustme): STARTTLS required and
opportunistic, implicit TLS, AUTH PLAIN and LOGIN, and certificates that must not pass."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pigeon.client import AuthError, SendResult, SMTPClient, TLSError, TLSMode, send
from tests.peers import (
    AiosmtpdPeer,
    PeerConnection,
    RecordingHandler,
    ScriptedPeer,
    TestCA,
    Transcript,
    expect_send_error,
    resource_warnings,
)

SENDER = "carol@remote.test"
RECIPIENT = "alice@example.test"
MESSAGE = b"Subject: secret\r\n\r\nover TLS\r\n"
USERS = {"carol": "s3cret-pass"}


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler(users=USERS)


def deliver(port: int, transcript: Transcript | None = None, **options: Any) -> SendResult:
    options.setdefault("server", "127.0.0.1")
    options.setdefault("timeout", 5)
    with resource_warnings():
        return send(
            MESSAGE, sender=SENDER, recipients=[RECIPIENT], port=port, transcript=transcript,
            **options,
        )  # fmt: skip


# -- STARTTLS ---------------------------------------------------------------------------------


@pytest.fixture
def starttls_peer(ca: TestCA, handler: RecordingHandler) -> Iterator[AiosmtpdPeer]:
    with AiosmtpdPeer(
        handler, tls_context=ca.server_context(), authenticator=handler.authenticator
    ) as peer:
        yield peer


@pytest.mark.parametrize("mode", ["starttls", "opportunistic"])
def test_starttls(starttls_peer: AiosmtpdPeer, ca: TestCA, mode: TLSMode) -> None:
    transcript = Transcript()
    result = deliver(starttls_peer.port, transcript, tls=mode, ssl_context=ca.client_context())
    assert result.all_accepted
    assert transcript.commands()[:3] == ["EHLO", "STARTTLS", "EHLO"]
    # The EHLO after the handshake is a new one (RFC 3207 4.2): it offers AUTH, not STARTTLS.
    second_ehlo = transcript.index(">", "EHLO", transcript.index(">", "STARTTLS"))
    after = [line for _, line in transcript.entries[second_ehlo:]]
    assert not any("STARTTLS" in line for line in after)
    assert any(line.startswith("250-AUTH") for line in after)
    ((sender, recipients, content, _),) = starttls_peer.handler.messages
    assert (sender, recipients) == (SENDER, [RECIPIENT])
    assert content == MESSAGE


def test_starttls_required_but_not_offered_stops_before_mail() -> None:
    transcript = Transcript()
    with AiosmtpdPeer(RecordingHandler()) as peer:
        error, _ = expect_send_error(lambda: deliver(peer.port, transcript, tls="starttls"))
        assert peer.handler.messages == []
    assert isinstance(error, TLSError)
    assert error.stage == "STARTTLS"
    assert not error.temporary
    assert "MAIL" not in transcript.commands()


def test_opportunistic_without_starttls_sends_in_the_clear() -> None:
    with AiosmtpdPeer(RecordingHandler()) as peer:
        assert deliver(peer.port).all_accepted
        assert len(peer.handler.messages) == 1


def test_no_tls_does_not_start_tls_when_offered(starttls_peer: AiosmtpdPeer) -> None:
    transcript = Transcript()
    assert deliver(starttls_peer.port, transcript, tls="off").all_accepted
    assert "STARTTLS" not in transcript.commands()


def test_untrusted_certificate_stops_starttls(starttls_peer: AiosmtpdPeer) -> None:
    # No ssl_context: the system's CAs, which do not include the test CA.
    error, _ = expect_send_error(lambda: deliver(starttls_peer.port, tls="starttls"))
    assert isinstance(error, TLSError)
    assert error.stage == "STARTTLS"
    assert "certificate" in str(error).lower()
    assert starttls_peer.handler.messages == []


def test_untrusted_certificate_is_refused_in_opportunistic_mode_too(
    starttls_peer: AiosmtpdPeer,
) -> None:
    error, _ = expect_send_error(lambda: deliver(starttls_peer.port))
    assert isinstance(error, TLSError)
    assert starttls_peer.handler.messages == []


def test_verify_false_accepts_the_untrusted_certificate(starttls_peer: AiosmtpdPeer) -> None:
    assert deliver(starttls_peer.port, tls="starttls", verify=False).all_accepted
    assert len(starttls_peer.handler.messages) == 1


def test_certificate_for_another_name_is_refused(starttls_peer: AiosmtpdPeer, ca: TestCA) -> None:
    """Trusted CA, but the certificate names localhost and 127.0.0.1, not mx.other.test (as
    when an MX's name and its address's certificate disagree)."""

    async def main() -> None:
        client = SMTPClient(
            "mx.other.test",
            starttls_peer.port,
            tls="starttls",
            ssl_context=ca.client_context(),
            connect_to="127.0.0.1",
            timeout=5,
        )
        try:
            await client.connect()
        finally:
            await client.close()

    error, _ = expect_send_error(lambda: asyncio.run(main()))
    assert isinstance(error, TLSError)
    assert error.stage == "STARTTLS"
    assert "mx.other.test" in str(error)
    assert starttls_peer.handler.messages == []


def test_certificate_names_the_host_not_the_address(
    starttls_peer: AiosmtpdPeer, ca: TestCA
) -> None:
    assert deliver(
        starttls_peer.port, server="localhost", tls="starttls", ssl_context=ca.client_context()
    ).all_accepted


# -- implicit TLS -----------------------------------------------------------------------------


@pytest.fixture
def implicit_peer(ca: TestCA, handler: RecordingHandler) -> Iterator[AiosmtpdPeer]:
    with AiosmtpdPeer(
        handler,
        ssl_context=ca.server_context(),
        authenticator=handler.authenticator,
        auth_require_tls=False,
    ) as peer:
        yield peer


def test_implicit_tls(implicit_peer: AiosmtpdPeer, ca: TestCA) -> None:
    transcript = Transcript()
    result = deliver(
        implicit_peer.port,
        transcript,
        tls="implicit",
        ssl_context=ca.client_context(),
        username="carol",
        password=USERS["carol"],
    )
    assert result.all_accepted
    assert "STARTTLS" not in transcript.commands()
    assert implicit_peer.handler.logins == [("PLAIN", "carol")]
    assert len(implicit_peer.handler.messages) == 1


def test_implicit_tls_with_an_untrusted_certificate(implicit_peer: AiosmtpdPeer) -> None:
    error, _ = expect_send_error(lambda: deliver(implicit_peer.port, tls="implicit"))
    assert isinstance(error, TLSError)
    assert error.stage == "connect"
    assert implicit_peer.handler.messages == []
    assert deliver(implicit_peer.port, tls="implicit", verify=False).all_accepted


def test_implicit_tls_to_a_plain_server_fails_cleanly() -> None:
    with AiosmtpdPeer(RecordingHandler()) as peer:
        error, _ = expect_send_error(lambda: deliver(peer.port, tls="implicit", timeout=2))
    assert error.stage in ("connect", "greeting")


# -- AUTH -------------------------------------------------------------------------------------


def test_auth_plain_after_starttls(starttls_peer: AiosmtpdPeer, ca: TestCA) -> None:
    transcript = Transcript()
    result = deliver(
        starttls_peer.port,
        transcript,
        tls="starttls",
        ssl_context=ca.client_context(),
        username="carol",
        password=USERS["carol"],
    )
    assert result.all_accepted
    assert starttls_peer.handler.logins == [("PLAIN", "carol")]
    assert ">AUTH PLAIN ****" in transcript.text().splitlines()
    assert transcript.commands().index("STARTTLS") < transcript.sent.index("AUTH PLAIN ****")
    assert USERS["carol"] not in transcript.text()
    assert "czNjcmV0" not in transcript.text()  # nor any base64 of it


def test_auth_login(ca: TestCA, handler: RecordingHandler) -> None:
    transcript = Transcript()
    with AiosmtpdPeer(
        handler,
        tls_context=ca.server_context(),
        authenticator=handler.authenticator,
        auth_exclude_mechanism=["PLAIN"],
    ) as peer:
        result = deliver(
            peer.port,
            transcript,
            ssl_context=ca.client_context(),
            username="carol",
            password=USERS["carol"],
        )
    assert result.all_accepted
    assert handler.logins == [("LOGIN", "carol")]
    auth = transcript.sent.index("AUTH LOGIN")
    assert transcript.sent[auth + 1 : auth + 3] == ["****", "****"]
    assert USERS["carol"] not in transcript.text()


def test_wrong_password_is_an_auth_error(starttls_peer: AiosmtpdPeer, ca: TestCA) -> None:
    error, _ = expect_send_error(
        lambda: deliver(
            starttls_peer.port,
            ssl_context=ca.client_context(),
            username="carol",
            password="wrong",
        )
    )
    assert isinstance(error, AuthError)
    assert error.stage == "AUTH"
    assert not error.temporary
    assert "535" in str(error)
    assert starttls_peer.handler.messages == []


def test_auth_without_tls_to_loopback_is_allowed(handler: RecordingHandler) -> None:
    transcript = Transcript()
    with AiosmtpdPeer(handler, authenticator=handler.authenticator, auth_require_tls=False) as peer:
        result = deliver(peer.port, transcript, username="carol", password=USERS["carol"])
    assert result.all_accepted
    assert handler.logins == [("PLAIN", "carol")]
    assert "STARTTLS" not in transcript.commands()


def _local_address() -> str | None:
    """This machine's own non-loopback IPv4 address, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_auth_without_tls_to_another_host_is_refused_before_sending_secrets() -> None:
    address = _local_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")

    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        peer.line()
        peer.send(b"250-peer.test\r\n250 AUTH PLAIN LOGIN\r\n")
        peer.line()  # QUIT, or nothing if the client just hangs up
        peer.send(b"221 bye\r\n")

    transcript = Transcript()
    with ScriptedPeer(script, host=address) as peer:
        error, _ = expect_send_error(
            lambda: deliver(peer.port, transcript, server=address, username="carol", password="x")
        )
        received = [line for c in peer.connections for line in c.received]
    assert isinstance(error, AuthError)
    assert not any(line.startswith(b"AUTH") for line in received)
    assert "AUTH" not in transcript.commands()


def test_auth_with_no_usable_mechanism() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        peer.line()
        peer.send(b"250-peer.test\r\n250 AUTH CRAM-MD5 GSSAPI\r\n")
        peer.stall()

    with ScriptedPeer(script) as peer:
        error, _ = expect_send_error(
            lambda: deliver(peer.port, username="carol", password="x", timeout=2)
        )
    assert isinstance(error, AuthError)
    assert "CRAM-MD5" in str(error)
