"""Servers that misbehave: the client gives a clear error naming the stage, and never hangs.

Each peer is a raw socket script (``tests.peers.ScriptedPeer``); timeouts are half a second,
so a client that waited for ever would fail the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pigeon.client import (
    ProtocolError,
    SendError,
    SendResult,
    SMTPClient,
    TimeoutError_,
    send,
)
from tests.peers import (
    PeerConnection,
    ScriptedPeer,
    Transcript,
    esmtp_script,
    expect_send_error,
)

SENDER = "carol@remote.test"
RECIPIENTS = ["alice@example.test", "bob@example.test"]
MESSAGE = b"Subject: test\r\n\r\nbody\r\n"
TIMEOUT = 0.5


def send_to(
    peer: ScriptedPeer,
    message: bytes = MESSAGE,
    transcript: Transcript | None = None,
    recipients: list[str] | None = None,
) -> SendResult:
    return send(
        message,
        sender=SENDER,
        recipients=recipients or RECIPIENTS,
        server="127.0.0.1",
        port=peer.port,
        tls="off",
        timeout=TIMEOUT,
        transcript=transcript,
    )


def failure(peer: ScriptedPeer, message: bytes = MESSAGE) -> SendError:
    """The error sending to ``peer`` raises (the test fails when there is none)."""
    error, _ = expect_send_error(lambda: send_to(peer, message))
    return error


def greet_and_ehlo(peer: PeerConnection, extensions: bytes = b"250 PIPELINING\r\n") -> None:
    peer.send(b"220 peer.test ESMTP\r\n")
    assert peer.line().startswith(b"EHLO ")
    peer.send(b"250-peer.test\r\n" + extensions)


# -- the connection and the greeting ----------------------------------------------------------


def test_peer_that_closes_right_after_connect() -> None:
    def script(peer: PeerConnection) -> None:
        peer.sock.close()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, ProtocolError)
    assert error.stage == "greeting"
    assert "closed the connection" in str(error)
    assert str(error).startswith("greeting: ")


def test_garbage_greeting() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, ProtocolError)
    assert error.stage == "greeting"
    assert "garbage" in str(error)


def test_binary_garbage_with_no_line_end_is_not_waited_for_forever() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"\x00\xff" * 5000)
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, ProtocolError)
    assert error.stage == "greeting"


def test_connection_refused_is_a_connect_error() -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        port = peer.port
    # The peer is gone: nothing listens on its port any more.
    error, leaks = expect_send_error(
        lambda: send(MESSAGE, sender=SENDER, recipients=RECIPIENTS, server="127.0.0.1", port=port)
    )
    assert leaks == []
    assert type(error).__name__ == "ConnectError"
    assert error.stage == "connect"
    assert error.temporary


@pytest.mark.parametrize(
    ("greeting", "temporary"),
    [(b"421 4.7.0 too busy\r\n", True), (b"554 5.7.1 go away\r\n", False)],
)
def test_refusing_greeting(greeting: bytes, temporary: bool) -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(greeting)
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, SendError)
    assert error.stage == "greeting"
    assert error.temporary is temporary
    assert greeting.decode().split(" ", 1)[0] in str(error)


def test_a_failed_send_leaves_no_socket_open() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"554 5.7.1 go away\r\n")
        peer.stall()

    with ScriptedPeer(script) as peer:
        _, leaks = expect_send_error(lambda: send_to(peer))
    assert leaks == []


# -- stalls -----------------------------------------------------------------------------------


def stall_at(stage: str) -> Callable[[PeerConnection], None]:
    """A server without PIPELINING that answers everything until ``stage``, then says
    nothing more."""

    def script(peer: PeerConnection) -> None:
        if stage == "greeting":
            peer.stall()
            return
        peer.send(b"220 peer.test ESMTP\r\n")
        while True:
            line = peer.line()
            verb = line.split(b" ")[0].decode().upper()
            if verb == stage:
                peer.stall()
                return
            if verb == "DATA":
                peer.send(b"354 go ahead\r\n")
                peer.until_dot()
                if stage == "end of data":
                    peer.stall()
                    return
                peer.send(b"250 2.0.0 Ok\r\n")
            else:
                peer.send(b"250 Ok\r\n")

    return script


@pytest.mark.parametrize(
    ("stall", "stage"),
    [
        ("greeting", "greeting"),
        ("EHLO", "EHLO"),
        ("MAIL", "MAIL"),
        ("RCPT", "RCPT"),
        ("DATA", "DATA"),
        ("end of data", "DATA"),
    ],
)
def test_stalled_peer_times_out_naming_the_stage(stall: str, stage: str) -> None:
    with ScriptedPeer(stall_at(stall)) as peer:
        error = failure(peer)
    assert isinstance(error, TimeoutError_)
    assert error.stage == stage
    assert error.temporary
    assert f"{TIMEOUT:g}s" in str(error)


def test_stall_after_a_pipelined_batch_names_mail() -> None:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, TimeoutError_)
    assert error.stage == "MAIL"


# -- connections dropped mid-session ----------------------------------------------------------


def drop_in_data(reset: bool, read: int = 10) -> Callable[[PeerConnection], None]:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(b"250 Ok\r\n" * (1 + len(RECIPIENTS)) + b"354 go ahead\r\n")
        peer.exactly(read)
        if reset:
            peer.reset()
        else:
            peer.sock.close()

    return script


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_connection_dropped_mid_data_names_data(reset: bool) -> None:
    with ScriptedPeer(drop_in_data(reset)) as peer:
        error = failure(peer, MESSAGE + b"x" * 500 + b"\r\n")
    assert isinstance(error, ProtocolError)
    assert error.stage == "DATA"


def test_big_message_dropped_mid_data_names_data() -> None:
    big = MESSAGE + (b"y" * 78 + b"\r\n") * 150_000  # 12 MB: more than socket buffers hold
    with ScriptedPeer(drop_in_data(reset=True, read=1000)) as peer:
        error = failure(peer, big)
    assert isinstance(error, ProtocolError)
    assert error.stage == "DATA"


def test_peer_that_stops_reading_mid_data_times_out_naming_data() -> None:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(b"250 Ok\r\n" * (1 + len(RECIPIENTS)) + b"354 go ahead\r\n")
        # Never read; hang up after a while, so the client's close() need not wait for its
        # unsent megabytes until its own 5 s limit.
        peer.stall(2.0)
        peer.reset()

    big = MESSAGE + (b"y" * 78 + b"\r\n") * 150_000
    with ScriptedPeer(script) as peer:
        error = failure(peer, big)
    assert isinstance(error, TimeoutError_)
    assert error.stage == "DATA"


def test_connection_dropped_after_rcpt_names_rcpt() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        peer.line()
        peer.send(b"250 peer.test\r\n")  # no PIPELINING: one command at a time
        peer.line()
        peer.send(b"250 Ok\r\n")
        peer.line()
        peer.sock.close()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, ProtocolError)
    assert error.stage == "RCPT"


def test_421_mid_session_names_the_stage() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        peer.line()
        peer.send(b"250 peer.test\r\n")
        peer.line()
        peer.send(b"421 4.3.2 shutting down\r\n")
        peer.sock.close()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, SendError)
    assert error.stage == "MAIL"
    assert error.temporary
    assert "421" in str(error)


def test_garbage_reply_to_rcpt_names_rcpt() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"220 peer.test ESMTP\r\n")
        peer.line()
        peer.send(b"250 peer.test\r\n")
        peer.line()
        peer.send(b"250 Ok\r\n")
        peer.line()
        peer.send(b"<html>oops</html>\r\n")
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, ProtocolError)
    assert error.stage == "RCPT"


# -- old and odd servers ----------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [b"500 5.5.2 what?\r\n", b"502 5.5.1 not here\r\n"])
def test_ehlo_refused_falls_back_to_helo(refusal: bytes) -> None:
    messages: list[bytes] = []

    def script(peer: PeerConnection) -> None:
        peer.send(b"220 old.test SMTP\r\n")
        assert peer.line().startswith(b"EHLO ")
        peer.send(refusal)
        assert peer.line().startswith(b"HELO ")
        peer.send(b"250 old.test\r\n")
        while True:
            line = peer.line()
            if line == b"QUIT":
                peer.send(b"221 bye\r\n")
                return
            if line == b"DATA":
                peer.send(b"354 go\r\n")
                messages.append(peer.until_dot())
            peer.send(b"250 ok\r\n")

    transcript = Transcript()
    with ScriptedPeer(script) as peer:
        result = send_to(peer, MESSAGE + "ü".encode(), transcript=transcript)
    assert result.all_accepted
    assert transcript.commands() == ["EHLO", "HELO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    # No ESMTP parameters after HELO (RFC 5321 4.1.1.2), so the 8-bit body went 7-bit.
    (mail,) = [line for line in transcript.sent if line.startswith("MAIL")]
    assert mail == f"MAIL FROM:<{SENDER}>"
    (text,) = messages
    assert text.isascii()


def test_helo_refused_too_is_an_error() -> None:
    def script(peer: PeerConnection) -> None:
        peer.send(b"220 old.test SMTP\r\n")
        peer.line()
        peer.send(b"500 no\r\n")
        peer.line()
        peer.send(b"550 not you\r\n")
        peer.stall()

    with ScriptedPeer(script) as peer:
        error = failure(peer)
    assert isinstance(error, SendError)
    assert error.stage == "EHLO"
    assert not error.temporary


def test_mail_refused_refuses_every_recipient_with_its_reply() -> None:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(
            b"553 5.1.7 bad sender\r\n"
            + b"503 5.5.1 need MAIL\r\n" * len(RECIPIENTS)
            + b"503 5.5.1 need RCPT\r\n"
        )
        assert peer.line() == b"QUIT"
        peer.send(b"221 bye\r\n")

    with ScriptedPeer(script) as peer:
        result = send_to(peer)
    assert [(r.code, r.status, r.text) for r in result.recipients] == [
        (553, "5.1.7", "bad sender")
    ] * 2


def test_refusal_after_data_applies_to_every_accepted_recipient() -> None:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n")
        peer.until_dot()
        peer.send(b"554 5.7.1 spam\r\n")
        peer.line()
        peer.send(b"221 bye\r\n")

    with ScriptedPeer(script) as peer:
        result = send_to(peer)
    assert [(r.recipient, r.code, r.status) for r in result.recipients] == [
        ("alice@example.test", 554, "5.7.1"),
        ("bob@example.test", 550, "5.1.1"),
    ]


def test_354_to_data_after_every_rcpt_refused_gets_an_empty_message() -> None:
    """RFC 2920 3.1: a pipelining client whose DATA got 354 though no RCPT succeeded sends
    the terminating dot alone."""
    seen: list[bytes] = []

    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(b"250 ok\r\n550 no\r\n550 no\r\n354 go\r\n")
        seen.append(peer.until_dot())
        peer.send(b"554 no valid recipients\r\n")
        peer.line()
        peer.send(b"221 bye\r\n")

    with ScriptedPeer(script) as peer:
        result = send_to(peer)
    assert [r.code for r in result.recipients] == [550, 550]
    assert seen == [b""]


def test_rudely_closed_after_the_message_still_reports_success() -> None:
    def script(peer: PeerConnection) -> None:
        greet_and_ehlo(peer)
        for _ in range(2 + len(RECIPIENTS)):
            peer.line()
        peer.send(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        peer.until_dot()
        peer.send(b"250 2.0.0 queued\r\n")
        peer.sock.close()  # no 221 to QUIT

    with ScriptedPeer(script) as peer:
        result = send_to(peer)
    assert result.all_accepted


def test_client_stays_usable_after_a_refused_transaction() -> None:
    async def main(port: int) -> list[int]:
        codes = []
        async with SMTPClient("127.0.0.1", port, tls="off", timeout=TIMEOUT) as client:
            for recipient in ("refuse@example.test", "alice@example.test"):
                result = await client.send(MESSAGE, sender=SENDER, recipients=[recipient])
                codes.append(result.recipients[0].code)
        return codes

    def rcpt(line: bytes) -> bytes:
        return b"550 5.1.1 no\r\n" if b"refuse@" in line else b"250 ok\r\n"

    with ScriptedPeer(esmtp_script(("8BITMIME",), rcpt=rcpt)) as peer:
        assert asyncio.run(main(peer.port)) == [550, 250]
        received = peer.connections[0].received
    verbs = [line.split(b" ")[0] for line in received]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"RSET", b"MAIL", b"RCPT", b"DATA", b"QUIT"]
