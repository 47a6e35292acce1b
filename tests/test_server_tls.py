"""TLS end to end: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) over real sockets.

Python's smtplib is the peer for the ordinary conversations; raw sockets (and a TLS client
driven through memory BIOs) send what no polite client would: commands pipelined after
STARTTLS in the clear (CVE-2011-0411), garbage instead of a handshake, application data in
the same packet as the last handshake message. Certificates come from a trustme CA.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import logging
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from pigeon.config import ConfigError, Limits, ListenerConfig, TLSConfig
from tests.peers import TestCA
from tests.servers import (
    ThreadedServer,
    make_config,
    read_maildir,
    tls_config,
    tls_listeners,
    wait_for,
)

ALICE = "alice@example.test"
SENDER = "carol@remote.test"
BODY = "From: carol@remote.test\r\nTo: alice@example.test\r\nSubject: secret\r\n\r\nHello.\r\n"
STARTTLS, IMPLICIT = 0, 1


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(params=["uvloop", "asyncio"])
def tls_server(
    request: pytest.FixtureRequest, tmp_path: Path, ca: TestCA
) -> Iterator[ThreadedServer]:
    """Pigeon with a STARTTLS listener (``port``) and an implicit-TLS one (``address_of(1)``),
    on each event loop: the two differ in when a transport starts and stops reading."""
    config = make_config(
        tmp_path / "data", listen=tls_listeners(), tls=tls_config(ca.cert, tmp_path / "tls")
    )
    with ThreadedServer(config, uvloop=request.param == "uvloop") as running:
        yield running


def alice_messages(server: ThreadedServer) -> list[email.message.EmailMessage]:
    server.wait_idle()
    messages = []
    for raw in read_maildir(server.config.mail_dir / "example.test" / "alice"):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        messages.append(message)
    return messages


def served_certificate(address: tuple[str, int], *, implicit: bool) -> bytes:
    """The DER certificate the server presents (not verified: this only looks at it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if implicit:
        with smtplib.SMTP_SSL(*address, timeout=10, context=context) as client:
            client.ehlo("client.test")
            sock = client.sock
            assert isinstance(sock, ssl.SSLSocket)
            der = sock.getpeercert(binary_form=True)
    else:
        with smtplib.SMTP(*address, timeout=10) as client:
            client.starttls(context=context)
            sock = client.sock
            assert isinstance(sock, ssl.SSLSocket)
            der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode("ascii"))


# -- a raw client ----------------------------------------------------------------------------


class Raw:
    """Bytes exactly as given, replies exactly as sent; TLS on the same socket when asked."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock: socket.socket = socket.create_connection(address, timeout=10)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self._buffer:
                chunk = self.sock.recv(4096)
                assert chunk, f"connection closed; so far {b''.join(lines)!r}"
                self._buffer += chunk
            line, _, self._buffer = self._buffer.partition(b"\r\n")
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def start_tls(self, context: ssl.SSLContext) -> None:
        # Nothing may be buffered: what the server said in the clear is all read.
        assert self._buffer == b"", self._buffer
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def closed(self) -> bool:
        """The server hung up (EOF or reset) without saying anything more."""
        try:
            return self.sock.recv(4096) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


class MemoryTLS:
    """A TLS client over a plain socket through memory BIOs, so that its last handshake
    message and the first application data leave in one write, as a fast client's may."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self._plain = b""

    def handshake_then(self, first: bytes) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self.tls.write(first)
        self._flush()  # client Finished (TLS 1.3) and ``first``: one sendall

    def reply(self) -> bytes:
        lines = []
        while True:
            while b"\r\n" not in self._plain:
                try:
                    self._plain += self.tls.read(4096)
                except ssl.SSLWantReadError:
                    self._receive()
            line, _, self._plain = self._plain.partition(b"\r\n")
            lines.append(line + b"\r\n")
            if line[3:4] != b"-":
                return b"".join(lines)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "connection closed during TLS"
        self.incoming.write(chunk)


# -- STARTTLS with smtplib ---------------------------------------------------------------------


def test_starttls_then_a_message_records_tls_in_received(
    tls_server: ThreadedServer, ca: TestCA
) -> None:
    with smtplib.SMTP(*tls_server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, text = client.starttls(context=ca.client_context())
        assert (code, text) == (220, b"2.0.0 Ready to start TLS")
        client.ehlo("client.test")
        assert not client.has_extn("starttls")  # RFC 3207 section 4.2
        assert client.sendmail(SENDER, [ALICE], BODY) == {}
    (message,) = alice_messages(tls_server)
    received = " ".join(message["Received"].split())
    assert received.startswith("from client.test (unknown [127.0.0.1]) (using TLSv1.")
    assert " with cipher " in received
    assert " bits)) by mx.example.test (Pigeon) with ESMTPS id " in received
    assert message["Subject"] == "secret"


def test_starttls_twice_is_refused(tls_server: ThreadedServer, ca: TestCA) -> None:
    with smtplib.SMTP(*tls_server.address, timeout=10) as client:
        client.starttls(context=ca.client_context())
        client.ehlo("client.test")
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert client.sendmail(SENDER, [ALICE], BODY) == {}  # and the session goes on
    assert len(alice_messages(tls_server)) == 1


def test_mail_in_the_clear_is_still_taken_and_says_esmtp(tls_server: ThreadedServer) -> None:
    with smtplib.SMTP(*tls_server.address, timeout=10) as client:
        assert client.sendmail(SENDER, [ALICE], BODY) == {}
    (message,) = alice_messages(tls_server)
    received = " ".join(message["Received"].split())
    assert "using" not in received
    assert " with ESMTP id " in received


def test_starttls_is_502_without_a_certificate(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (502, b"5.5.1 Command not implemented")
        assert client.noop()[0] == 250


# -- implicit TLS ----------------------------------------------------------------------------


def test_implicit_tls_with_smtp_ssl(tls_server: ThreadedServer, ca: TestCA) -> None:
    address = tls_server.address_of(IMPLICIT)
    with smtplib.SMTP_SSL(*address, timeout=10, context=ca.client_context()) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert not client.has_extn("starttls")
        assert client.docmd("STARTTLS") == (503, b"5.5.1 TLS already active")
        assert client.sendmail(SENDER, [ALICE], BODY) == {}
    (message,) = alice_messages(tls_server)
    received = " ".join(message["Received"].split())
    assert "(using TLSv1." in received
    assert " with ESMTPS id " in received


def test_plain_text_to_the_implicit_port_gets_no_smtp(tls_server: ThreadedServer) -> None:
    client = Raw(tls_server.address_of(IMPLICIT))
    client.send(b"EHLO client.test\r\n")
    assert client.closed()  # not a ClientHello: the handshake fails, nothing is said
    client.close()
    with smtplib.SMTP(*tls_server.address, timeout=10) as other:
        assert other.noop()[0] == 250  # the server goes on


def test_minimum_version_refuses_older_clients(tmp_path: Path, ca: TestCA) -> None:
    tls = tls_config(ca.cert, tmp_path / "tls", min_version="1.3")
    config = make_config(tmp_path / "data", listen=tls_listeners(), tls=tls)
    old = ca.client_context()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with ThreadedServer(config) as server:
        with pytest.raises(ssl.SSLError):
            smtplib.SMTP_SSL(*server.address_of(IMPLICIT), timeout=10, context=old)
        with smtplib.SMTP_SSL(
            *server.address_of(IMPLICIT), timeout=10, context=ca.client_context()
        ) as client:
            client.ehlo("client.test")
            sock = client.sock
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() == "TLSv1.3"


# -- the STARTTLS injection (CVE-2011-0411) --------------------------------------------------


def test_commands_pipelined_after_starttls_are_never_executed(
    tls_server: ThreadedServer, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pigeon")
    client = Raw(tls_server.address)
    assert client.reply().startswith(b"220 mx.example.test ")
    client.send(b"EHLO x\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n")  # one write
    assert client.reply().startswith(b"250-mx.example.test\r\n")
    assert client.reply() == b"220 2.0.0 Ready to start TLS\r\n"
    client.start_tls(ca.client_context())
    # The next reply answers what is sent now, under TLS: no 250 for RSET, none for MAIL.
    ehlo = client.command(b"EHLO y")
    assert ehlo.startswith(b"250-mx.example.test\r\n")
    assert b"STARTTLS" not in ehlo
    # Had the injected MAIL run, this would be a nested MAIL (503).
    assert client.command(b"MAIL FROM:<good@remote.test>") == b"250 2.1.0 Ok\r\n"
    assert client.command(b"RCPT TO:<alice@example.test>") == b"250 2.1.5 Ok\r\n"
    assert client.command(b"QUIT").startswith(b"221 2.0.0 ")
    assert client.closed()
    client.close()
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "evil" not in log
    assert "event=tls " in log


def test_a_handshake_that_fails_closes_the_connection_and_is_logged(
    tls_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pigeon")
    client = Raw(tls_server.address)
    client.reply()
    client.command(b"EHLO client.test")
    assert client.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
    client.send(b"MAIL FROM:<plain@x>\r\n")  # not a ClientHello
    assert client.closed()
    client.close()
    wait_for(
        lambda: any("event=tls_failed" in r.getMessage() for r in caplog.records),
        what="the failed handshake in the log",
    )
    wait_for(lambda: not tls_server.server.context.sessions, what="the session to be gone")
    with smtplib.SMTP(*tls_server.address, timeout=10) as other:
        assert other.noop()[0] == 250


def test_a_client_that_hangs_up_instead_of_handshaking_is_forgotten(
    tls_server: ThreadedServer,
) -> None:
    for address in (tls_server.address, tls_server.address_of(IMPLICIT)):
        client = Raw(address)
        if address == tls_server.address:
            client.reply()
            client.command(b"EHLO client.test")
            client.command(b"STARTTLS")
        client.close()
    wait_for(lambda: not tls_server.server.context.sessions, what="both sessions to be gone")


def test_a_client_that_never_handshakes_is_dropped(tmp_path: Path, ca: TestCA) -> None:
    config = make_config(
        tmp_path / "data",
        listen=tls_listeners(),
        tls=tls_config(ca.cert, tmp_path / "tls"),
        limits=Limits(min_free_disk=0, command_timeout=1),
    )
    with ThreadedServer(config) as server:
        silent = Raw(server.address_of(IMPLICIT))
        assert silent.closed()  # bounded by the handshake timeout (the command timeout)
        silent.close()
        wait_for(lambda: not server.server.context.sessions, what="the session to be gone")


# -- application data in the packet that ends the handshake --------------------------------


def test_ehlo_sent_with_the_last_handshake_message_is_answered_after_starttls(
    tls_server: ThreadedServer, ca: TestCA
) -> None:
    client = Raw(tls_server.address)
    client.reply()
    client.command(b"EHLO client.test")
    assert client.command(b"STARTTLS") == b"220 2.0.0 Ready to start TLS\r\n"
    tls = MemoryTLS(client.sock, ca.client_context())
    tls.handshake_then(b"EHLO client.test\r\n")
    assert tls.reply().startswith(b"250-mx.example.test\r\n")
    client.close()


def test_ehlo_sent_with_the_last_handshake_message_on_implicit_tls(
    tls_server: ThreadedServer, ca: TestCA
) -> None:
    client = Raw(tls_server.address_of(IMPLICIT))
    tls = MemoryTLS(client.sock, ca.client_context())
    tls.handshake_then(b"EHLO client.test\r\n")
    assert tls.reply().startswith(b"220 mx.example.test ")  # the greeting first
    assert tls.reply().startswith(b"250-mx.example.test\r\n")
    client.close()


# -- shutdown and reload ---------------------------------------------------------------------


def test_shutdown_says_421_inside_tls(tmp_path: Path, ca: TestCA) -> None:
    config = make_config(
        tmp_path / "data", listen=tls_listeners(), tls=tls_config(ca.cert, tmp_path / "tls")
    )
    server = ThreadedServer(config).__enter__()
    client = smtplib.SMTP_SSL(*server.address_of(IMPLICIT), timeout=10, context=ca.client_context())
    try:
        client.ehlo("client.test")
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        code, text = client.getreply()
        assert code == 421
        assert b"4.3.2" in text
        stopper.join(60)
    finally:
        client.close()
        server.stop()


def test_reload_serves_the_new_certificate_to_new_sessions(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pigeon")
    tls = tls_config(ca.cert, tmp_path / "tls")
    config = make_config(tmp_path / "data", listen=tls_listeners(), tls=tls)
    renewed = ca.ca.issue_cert("localhost", "127.0.0.1")
    with ThreadedServer(config) as server:
        assert served_certificate(server.address, implicit=False) == der_of(ca.cert)
        # A session begun with the old certificate, going on after the reload.
        old = smtplib.SMTP_SSL(
            *server.address_of(IMPLICIT), timeout=10, context=ca.client_context()
        )
        old.ehlo("client.test")
        tls_config(renewed, tmp_path / "tls")  # overwrites cert.pem and key.pem
        assert server.call(server.server.reload_tls()) is True
        for implicit in (False, True):
            address = server.address_of(IMPLICIT if implicit else STARTTLS)
            assert served_certificate(address, implicit=implicit) == der_of(renewed)
        assert old.sendmail(SENDER, [ALICE], BODY) == {}
        old.quit()

        # A reload that fails keeps what is served.
        assert tls.certificate is not None
        tls.certificate.write_text("not a certificate\n")
        assert server.call(server.server.reload_tls()) is False
        assert served_certificate(server.address, implicit=False) == der_of(renewed)
        assert tls.key is not None
        tls.key.unlink()
        assert server.call(server.server.reload_tls()) is False
        assert served_certificate(server.address, implicit=False) == der_of(renewed)
        assert len(alice_messages(server)) == 1
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "event=tls_reloaded" in log
    assert "event=tls_reload_failed" in log
    assert "tls.certificate (--tls-cert)" in log


def test_a_server_without_a_readable_certificate_does_not_start(tmp_path: Path) -> None:
    missing = TLSConfig(certificate=tmp_path / "nope.pem")
    config = make_config(tmp_path / "data", tls=missing)
    with pytest.raises(ConfigError, match=r"tls\.certificate .*nope\.pem"):
        ThreadedServer(config).__enter__()
    assert not (tmp_path / "data" / "spool").exists()  # nothing opened
    implicit = make_config(
        tmp_path / "data", listen=(ListenerConfig(address="127.0.0.1:0", tls="implicit"),)
    )
    with pytest.raises(ConfigError, match=r"listen\[0\]\.tls: 'implicit' needs a certificate"):
        ThreadedServer(implicit).__enter__()


def test_listener_tls_auto_follows_the_certificate(tmp_path: Path, ca: TestCA) -> None:
    config = make_config(tmp_path / "data", tls=tls_config(ca.cert, tmp_path / "tls"))
    assert config.listen[0].tls == "auto"
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
    config = replace(config, listen=(replace(config.listen[0], tls="none"),))
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
