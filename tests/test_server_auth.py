"""AUTH and submission end to end: swaks (STARTTLS and implicit TLS with AUTH PLAIN and
LOGIN), Python's smtplib for everything a polite client does and some it does not, and
Pigeon's own client for SCRAM-SHA-256. Certificates come from a trustme CA; every server is
on loopback, on a port the kernel chose.

Listeners of the server under test, by index:

0. mx, STARTTLS, no AUTH (the default for mx)
1. submission, STARTTLS, AUTH only under TLS (``auth_plaintext = "never"``)
2. submissions (implicit TLS)
3. submission without TLS: AUTH in the clear for loopback clients (the default)
4. mx with ``auth = "on"``, STARTTLS, AUTH in the clear for loopback clients
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import logging
import os
import shutil
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pigeon.auth import UserStore
from pigeon.client import AuthError, compose, send
from pigeon.config import AuthConfig, ListenerConfig
from tests.peers import TestCA, Transcript
from tests.servers import ThreadedServer, make_config, read_maildir, tls_config, wait_for

MX, SUBMISSION, SUBMISSIONS, LOCAL_SUBMISSION, MX_AUTH = range(5)
ALICE, PASSWORD = "alice@example.test", "alice's secret"
SWAKS = shutil.which("swaks")
needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def start_server(tmp_path: Path, ca: TestCA, *, failure_delay: float = 0.01) -> ThreadedServer:
    data = tmp_path / "data"
    data.mkdir(parents=True)
    users = UserStore(data / "users.db")
    users.add(ALICE, PASSWORD)
    users.close()
    listen = (
        ListenerConfig(address="127.0.0.1:0", tls="starttls"),
        ListenerConfig(
            address="127.0.0.1:0", role="submission", tls="starttls", auth_plaintext="never"
        ),
        ListenerConfig(address="127.0.0.1:0", role="submissions"),
        ListenerConfig(address="127.0.0.1:0", role="submission", tls="none"),
        ListenerConfig(address="127.0.0.1:0", tls="starttls", auth="on"),
    )
    config = make_config(
        data,
        listen=listen,
        tls=tls_config(ca.cert, tmp_path / "tls"),
        auth=AuthConfig(failure_delay=failure_delay),
    )
    return ThreadedServer(config)


@pytest.fixture
def server(tmp_path: Path, ca: TestCA) -> Iterator[ThreadedServer]:
    with start_server(tmp_path, ca) as running:
        yield running


def connect(server: ThreadedServer, listener: int) -> smtplib.SMTP:
    client = smtplib.SMTP(*server.address_of(listener), local_hostname="client.test", timeout=10)
    client.ehlo()
    return client


def connect_tls(server: ThreadedServer, listener: int, ca: TestCA) -> smtplib.SMTP:
    client = connect(server, listener)
    client.starttls(context=ca.client_context())
    client.ehlo()
    return client


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def messages_of(server: ThreadedServer, user: str) -> list[email.message.EmailMessage]:
    server.wait_idle()
    parsed = []
    for raw in read_maildir(server.config.mail_dir / "example.test" / user):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        parsed.append(message)
    return parsed


def received_of(message: email.message.EmailMessage) -> str:
    return " ".join(str(message["Received"]).split())


def message_text(subject: str) -> bytes:
    return f"From: {ALICE}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()


# -- swaks ---------------------------------------------------------------------------------------


def swaks(
    server: ThreadedServer, listener: int, ca: TestCA, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAKS_")}
    host, port = server.address_of(listener)
    command = [
        SWAKS,
        "--config",
        "--server",
        f"{host}:{port}",
        "--timeout",
        "30",
        "--helo",
        "client.test",
        "--from",
        ALICE,
        "--to",
        "bob@example.test",
        "--tls-verify",
        "--tls-ca-path",
        str(ca.write_ca(tmp_path / "ca.pem")),
        "--auth-user",
        ALICE,
        "--auth-password",
        PASSWORD,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


@needs_swaks
@pytest.mark.peer
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_then_auth(
    server: ThreadedServer, ca: TestCA, tmp_path: Path, mechanism: str
) -> None:
    result = swaks(server, SUBMISSION, ca, tmp_path, "--tls", "--auth", mechanism)
    assert result.returncode == 0, result.stdout + result.stderr
    transcript = result.stdout
    # AUTH is offered only after STARTTLS on this listener.
    before_tls = transcript[: transcript.index("=== TLS started")]
    assert "250-AUTH" not in before_tls
    assert "<~  250-AUTH SCRAM-SHA-256 PLAIN LOGIN" in transcript
    assert f" ~> AUTH {mechanism}" in transcript
    assert "<~  235 2.7.0 Authentication successful" in transcript
    (message,) = messages_of(server, "bob")
    assert " with ESMTPSA id " in received_of(message)
    assert message["Return-Path"] == f"<{ALICE}>"


@needs_swaks
@pytest.mark.peer
def test_swaks_implicit_tls_on_submissions(
    server: ThreadedServer, ca: TestCA, tmp_path: Path
) -> None:
    result = swaks(server, SUBMISSIONS, ca, tmp_path, "--tlsc", "--auth", "PLAIN")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.index("=== TLS started") < result.stdout.index("<~  220 ")
    assert " ~> AUTH PLAIN" in result.stdout
    (message,) = messages_of(server, "bob")
    assert " with ESMTPSA id " in received_of(message)


@needs_swaks
@pytest.mark.peer
def test_swaks_wrong_password_is_refused(
    server: ThreadedServer, ca: TestCA, tmp_path: Path
) -> None:
    result = swaks(
        server, SUBMISSION, ca, tmp_path, "--tls", "--auth", "LOGIN", "--auth-password", "nope"
    )
    assert result.returncode != 0
    assert "<~* 535 5.7.8 Authentication credentials invalid" in result.stdout
    assert "MAIL FROM" not in result.stdout
    assert messages_of(server, "bob") == []


# -- submission rules, with smtplib ----------------------------------------------------------


def test_submission_offers_auth_only_under_tls(server: ThreadedServer, ca: TestCA) -> None:
    client = connect(server, SUBMISSION)
    assert not client.has_extn("auth")
    assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}") == (
        538,
        b"5.7.11 Encryption required for requested authentication mechanism",
    )
    assert client.mail(ALICE) == (530, b"5.7.0 Must issue a STARTTLS command first")
    client.starttls(context=ca.client_context())
    client.ehlo()
    assert client.esmtp_features["auth"].split() == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    assert client.mail(ALICE) == (530, b"5.7.0 Authentication required")
    client.login(ALICE, PASSWORD)
    assert client.mail(ALICE)[0] == 250
    client.quit()


def test_loopback_clients_may_auth_in_the_clear_by_default(server: ThreadedServer) -> None:
    client = connect(server, LOCAL_SUBMISSION)
    assert client.has_extn("auth")
    assert client.mail(ALICE)[0] == 530
    client.login(ALICE, PASSWORD)
    client.sendmail(ALICE, ["bob@example.test"], message_text("clear"))
    client.quit()
    (message,) = messages_of(server, "bob")
    # ESMTPA: authenticated, no TLS (RFC 3848).
    assert " with ESMTPA id " in received_of(message)


def test_sender_must_be_the_users_own_address(server: ThreadedServer, ca: TestCA) -> None:
    client = connect_tls(server, SUBMISSION, ca)
    client.login(ALICE, PASSWORD)
    code, text = client.mail("bob@example.test")
    assert (code, text) == (
        553,
        b"5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice@example.test",
    )
    assert client.mail("Alice@Example.TEST")[0] == 250  # addresses compare without case
    client.rset()
    assert client.mail("")[0] == 250  # the null sender claims nobody's address
    client.quit()


def test_authenticated_users_relay_and_nobody_else_does(server: ThreadedServer, ca: TestCA) -> None:
    anonymous = connect_tls(server, MX, ca)
    anonymous.mail("someone@remote.test")
    assert anonymous.rcpt("victim@elsewhere.test") == (
        550,
        b"5.7.1 <victim@elsewhere.test>: Relay access denied",
    )
    anonymous.quit()
    user = connect_tls(server, SUBMISSION, ca)
    user.login(ALICE, PASSWORD)
    user.mail(ALICE)
    assert user.rcpt("friend@elsewhere.test")[0] == 250
    assert user.rcpt("nobody@example.test")[0] == 550  # local users still must exist
    user.quit()


def test_auth_is_off_on_mx_by_default_and_on_when_configured(
    server: ThreadedServer, ca: TestCA
) -> None:
    mx = connect_tls(server, MX, ca)
    assert not mx.has_extn("auth")
    assert mx.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")[0] == 502
    assert mx.mail("anyone@remote.test")[0] == 250  # no AUTH needed to deliver to us
    mx.quit()
    mx_auth = connect(server, MX_AUTH)
    mx_auth.login(ALICE, PASSWORD)
    mx_auth.mail(ALICE)
    assert mx_auth.rcpt("friend@elsewhere.test")[0] == 250
    mx_auth.quit()


def test_starttls_forgets_authentication(server: ThreadedServer, ca: TestCA) -> None:
    client = connect(server, MX_AUTH)
    client.login(ALICE, PASSWORD)
    client.starttls(context=ca.client_context())
    client.ehlo()
    client.mail(ALICE)
    # No longer authenticated: back to an anonymous client, which may not relay.
    assert client.rcpt("friend@elsewhere.test")[0] == 550
    client.rset()
    assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")[0] == 235
    client.quit()


# -- bad input ---------------------------------------------------------------------------------


def test_cancel_and_malformed_base64(server: ThreadedServer) -> None:
    client = connect(server, LOCAL_SUBMISSION)
    assert client.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
    assert client.docmd("*") == (501, b"5.0.0 Authentication cancelled")
    assert client.docmd("AUTH", "PLAIN") == (334, b"")
    assert client.docmd("!!not base64!!") == (501, b"5.5.2 Cannot Base64-decode client response")
    assert client.docmd("AUTH", "PLAIN AGFsaWNl=") == (
        501,
        b"5.5.2 Cannot Base64-decode client response",
    )
    assert client.docmd("AUTH", "CRAM-MD5") == (504, b"5.5.4 Unrecognized authentication type")
    assert client.docmd("NOOP")[0] == 250  # and the session goes on
    client.login(ALICE, PASSWORD)
    client.quit()


def test_auth_twice_and_in_a_transaction(server: ThreadedServer) -> None:
    client = connect(server, MX_AUTH)
    client.mail("someone@remote.test")
    assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}") == (
        503,
        b"5.5.1 AUTH not permitted during a mail transaction",
    )
    client.rset()
    assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")[0] == 235
    assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}") == (
        503,
        b"5.5.1 Already authenticated",
    )
    client.quit()


def test_failures_wait_longer_each_time(tmp_path: Path, ca: TestCA) -> None:
    with start_server(tmp_path, ca, failure_delay=0.2) as running:
        client = connect(running, LOCAL_SUBMISSION)
        waits = []
        for _ in range(3):
            started = time.monotonic()
            reply = client.docmd("AUTH", f"PLAIN {plain(ALICE, 'guess')}")
            waits.append(time.monotonic() - started)
            assert reply == (535, b"5.7.8 Authentication credentials invalid")
        assert waits[0] >= 0.2
        assert waits[1] >= 0.4
        assert waits[2] >= 0.8
        started = time.monotonic()
        assert client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")[0] == 235
        assert time.monotonic() - started < 0.8  # success is not delayed
        client.quit()


def test_unknown_user_gets_the_same_answer(server: ThreadedServer) -> None:
    client = connect(server, LOCAL_SUBMISSION)
    assert client.docmd("AUTH", f"PLAIN {plain('nobody@example.test', PASSWORD)}") == (
        535,
        b"5.7.8 Authentication credentials invalid",
    )
    client.quit()


# -- the user store, live ------------------------------------------------------------------------


def test_users_added_and_deleted_while_running(server: ThreadedServer) -> None:
    """users.db is read on every AUTH and RCPT: no restart. A user of a served domain has a
    mailbox there even though the configuration does not name them."""
    client = connect(server, MX_AUTH)
    client.mail("someone@remote.test")
    assert client.rcpt("dave@example.test")[0] == 550
    client.quit()
    store = UserStore(server.config.users_db)
    store.add("dave@example.test", "daves")
    try:
        client = connect(server, LOCAL_SUBMISSION)
        client.login("dave@example.test", "daves")
        client.sendmail("dave@example.test", ["dave@example.test"], message_text("to myself"))
        client.quit()
        wait_for(lambda: len(messages_of(server, "dave")) == 1, what="dave's message")
        store.delete("dave@example.test")
        client = connect(server, LOCAL_SUBMISSION)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("dave@example.test", "daves")
        client.quit()
        client = connect(server, MX)
        client.mail("someone@remote.test")
        assert client.rcpt("dave@example.test")[0] == 550  # no mailbox any more
        client.quit()
    finally:
        store.close()


def test_auth_is_logged_without_secrets(
    server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pigeon")
    client = connect(server, LOCAL_SUBMISSION)
    client.docmd("AUTH", f"PLAIN {plain(ALICE, 'wrong guess')}")
    client.docmd("AUTH", f"PLAIN {plain(ALICE, PASSWORD)}")
    client.quit()
    wait_for(lambda: any("result=ok" in r.getMessage() for r in caplog.records), what="the log")
    lines = [r.getMessage() for r in caplog.records if "event=auth" in r.getMessage()]
    assert len(lines) == 2
    assert "mechanism=PLAIN" in lines[0]
    assert "result=failed" in lines[0]
    assert "failures=1" in lines[0]
    assert "alice" not in lines[0]  # a failed attempt's name may be a mistyped password
    assert "mechanism=PLAIN" in lines[1]
    assert "user=alice@example.test" in lines[1]
    assert "result=ok" in lines[1]
    everything = "\n".join(r.getMessage() for r in caplog.records)
    assert "wrong guess" not in everything
    assert PASSWORD not in everything
    assert plain(ALICE, PASSWORD) not in everything


# -- Pigeon's own client: SCRAM-SHA-256 ----------------------------------------------------------


def test_pigeon_client_uses_scram(server: ThreadedServer, ca: TestCA) -> None:
    transcript = Transcript()
    message = compose(sender=ALICE, to=["bob@example.test"], subject="scram", text="Hi.")
    host, port = server.address_of(SUBMISSION)
    result = send(
        message,
        server=host,
        port=port,
        tls="starttls",
        ssl_context=ca.client_context(),
        username=ALICE,
        password=PASSWORD,
        transcript=transcript,
    )
    assert result.all_accepted
    sent = transcript.sent
    assert "AUTH SCRAM-SHA-256 ****" in sent
    assert "AUTH PLAIN ****" not in sent
    assert "<235 2.7.0 Authentication successful" in transcript.text().splitlines()
    assert PASSWORD not in transcript.text()
    (delivered,) = messages_of(server, "bob")
    assert delivered["Subject"] == "scram"
    assert " with ESMTPSA id " in received_of(delivered)


def test_pigeon_client_scram_with_a_wrong_password(server: ThreadedServer, ca: TestCA) -> None:
    message = compose(sender=ALICE, to=["bob@example.test"], subject="no", text="Hi.")
    host, port = server.address_of(SUBMISSIONS)
    with pytest.raises(AuthError) as caught:
        send(
            message,
            server=host,
            port=port,
            tls="implicit",
            ssl_context=ca.client_context(),
            username=ALICE,
            password="not it",
        )
    assert "535 5.7.8" in str(caught.value)
    assert not caught.value.temporary
