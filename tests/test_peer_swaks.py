"""End to end with swaks, the Swiss Army Knife for SMTP, as a real peer.

Every test runs swaks against a Pigeon in this process (``ThreadedServer`` on 127.0.0.1, a
free port), reads swaks's transcript and exit code, and reads the result back from the
Maildir with :class:`mailbox.Maildir`.

VRFY is not covered here: swaks has no option that sends VRFY or EXPN.

TLS: swaks (through Net::SSLeay) drives STARTTLS (``--tls``) and implicit TLS (``--tlsc``),
verifying the server's certificate against a trustme CA (``--tls-verify --tls-ca-path``).
"""

from __future__ import annotations

import email
import email.message
import email.policy
import mailbox
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import TestCA
from tests.servers import ThreadedServer, make_config, tls_config, tls_listeners

SWAKS = shutil.which("swaks")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (apt-get install swaks)"),
]

SENDER = "carol@remote.test"
QUEUED = re.compile(r"^<-  250 2\.0\.0 Ok: queued as (?P<id>[0-9A-Z]+)$", re.MULTILINE)


def swaks(
    server: ThreadedServer, *args: str, port: int | None = None
) -> subprocess.CompletedProcess[str]:
    """Run swaks against ``server`` (its first listener unless ``port``); ``--config`` alone
    keeps any ~/.swaksrc out of it."""
    assert SWAKS is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWAKS_")}
    command = [
        SWAKS,
        "--config",
        "--server",
        f"127.0.0.1:{port or server.port}",
        "--timeout",
        "30",
        "--helo",
        "client.test",
        "--from",
        SENDER,
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def maildir_of(server: ThreadedServer, user: str) -> Path:
    return server.config.mail_dir / "example.test" / user


def messages_of(server: ThreadedServer, user: str) -> list[email.message.EmailMessage]:
    """The messages in ``user``'s Maildir, read with :class:`mailbox.Maildir`, oldest first."""
    path = maildir_of(server, user)
    if not path.exists():
        return []
    box = mailbox.Maildir(path, factory=None, create=False)
    parsed = []
    for key in sorted(box.keys()):
        message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        parsed.append(message)
    return parsed


def delivered_files(server: ThreadedServer) -> list[Path]:
    mail_dir = server.config.mail_dir
    return [p for p in mail_dir.rglob("*") if p.is_file()] if mail_dir.exists() else []


def queue_id_of(transcript: str) -> str:
    (match,) = QUEUED.finditer(transcript)
    return match["id"]


def body_of(message: email.message.EmailMessage) -> str:
    content = message.get_content()
    assert isinstance(content, str)
    return content


def test_plain_message_to_alice(server: ThreadedServer) -> None:
    result = swaks(
        server,
        "--to",
        "alice@example.test",
        "--header",
        "Subject: hello from swaks",
        "--add-header",
        "X-Test-Case: plain",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 mx.example.test ESMTP" in result.stdout
    assert "<-  250-ENHANCEDSTATUSCODES" in result.stdout
    assert "<-  250 2.1.0 Ok" in result.stdout
    assert "<-  250 2.1.5 Ok" in result.stdout
    assert "<-  354 " in result.stdout
    assert "<-  221 2.0.0 " in result.stdout
    queue_id = queue_id_of(result.stdout)
    server.wait_idle()
    (message,) = messages_of(server, "alice")
    assert message["Return-Path"] == f"<{SENDER}>"
    assert message["Delivered-To"] == "alice@example.test"
    received = message["Received"]
    assert received.startswith("from client.test (unknown [127.0.0.1])")
    assert f"by mx.example.test (Pigeon) with ESMTP id {queue_id}" in received
    assert "for <alice@example.test>" in received
    # The headers and body swaks wrote, unchanged.
    assert message["From"] == SENDER
    assert message["To"] == "alice@example.test"
    assert message["Subject"] == "hello from swaks"
    assert message["X-Test-Case"] == "plain"
    assert message["X-Mailer"].startswith("swaks ")
    assert message["Message-Id"]
    assert body_of(message).startswith("This is a test mailing\n")
    assert messages_of(server, "bob") == []


def test_several_recipients_get_one_copy_each(server: ThreadedServer) -> None:
    recipients = ["alice@example.test", "bob@example.test", "postmaster@example.test"]
    result = swaks(server, "--to", ",".join(recipients), "--header", "Subject: to three")
    assert result.returncode == 0, result.stdout + result.stderr
    for recipient in recipients:
        assert f" -> RCPT TO:<{recipient}>" in result.stdout
    assert result.stdout.count("<-  250 2.1.5 Ok") == 3
    queue_id = queue_id_of(result.stdout)
    server.wait_idle()
    for user in ("alice", "bob", "postmaster"):
        (message,) = messages_of(server, user)
        assert message["Subject"] == "to three"
        assert message["Delivered-To"] == f"{user}@example.test"
        assert f"id {queue_id}" in message["Received"]
        # Several recipients: the Received line names none of them (Bcc privacy).
        assert "for <" not in message["Received"]


def test_unknown_user_is_refused_and_nothing_is_delivered(server: ThreadedServer) -> None:
    result = swaks(server, "--to", "nobody@example.test")
    assert result.returncode == 24  # swaks: no RCPT accepted
    assert "<** 550 5.1.1 <nobody@example.test>" in result.stdout
    assert " -> DATA" not in result.stdout
    assert "<-  221 2.0.0 " in result.stdout  # swaks quits; the session ended cleanly
    server.wait_idle()
    assert delivered_files(server) == []


def test_unknown_user_among_known_ones(server: ThreadedServer) -> None:
    result = swaks(server, "--to", "alice@example.test,nobody@example.test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<** 550 5.1.1 <nobody@example.test>" in result.stdout
    queue_id_of(result.stdout)
    server.wait_idle()
    (message,) = messages_of(server, "alice")
    assert message["To"].addresses[1].addr_spec == "nobody@example.test"
    assert not maildir_of(server, "nobody").exists()


def test_relay_to_a_foreign_domain_is_refused(server: ThreadedServer) -> None:
    result = swaks(server, "--to", "victim@elsewhere.test")
    assert result.returncode == 24
    assert "<** 550 5.7.1 <victim@elsewhere.test>: Relay access denied" in result.stdout
    assert " -> DATA" not in result.stdout
    server.wait_idle()
    assert delivered_files(server) == []


def test_pipelining(server: ThreadedServer) -> None:
    result = swaks(
        server,
        "--pipeline",
        "--to",
        "alice@example.test,nobody@example.test,bob@example.test",
        "--header",
        "Subject: pipelined",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # The whole envelope and DATA went out before the first reply came back ...
    sent_data = lines.index(" -> DATA")
    first_reply = lines.index("<-  250 2.1.0 Ok")
    assert sent_data < first_reply
    # ... and the replies came back in order, one per command.
    replies = [line for line in lines[first_reply:] if line.startswith(("<-", "<**"))][:5]
    assert [r[4:7] for r in replies] == ["250", "250", "550", "250", "354"]
    queue_id = queue_id_of(result.stdout)
    server.wait_idle()
    for user in ("alice", "bob"):
        (message,) = messages_of(server, user)
        assert message["Subject"] == "pipelined"
        assert f"id {queue_id}" in message["Received"]


def test_lines_starting_with_a_dot_survive_dot_stuffing(server: ThreadedServer) -> None:
    body = ".leading dot\n..two dots\n.\n..\n. space\nend"
    result = swaks(server, "--to", "bob@example.test", "--body", body)
    assert result.returncode == 0, result.stdout + result.stderr
    # swaks stuffed the dots on the wire; Pigeon must take them off again, once.
    assert " -> ..leading dot" in result.stdout
    assert " -> ...two dots" in result.stdout
    assert " -> ..\n" in result.stdout
    server.wait_idle()
    (message,) = messages_of(server, "bob")
    assert body_of(message).rstrip("\n") == body


def test_one_mebibyte_attachment_arrives_byte_identical(
    server: ThreadedServer, tmp_path: Path
) -> None:
    blob = random.Random(5321).randbytes(1 << 20)
    path = tmp_path / "blob.bin"
    path.write_bytes(blob)
    result = swaks(
        server,
        "--to",
        "alice@example.test",
        "--body",
        "see attachment",
        "--attach-type",
        "application/octet-stream",
        "--attach-name",
        "blob.bin",
        "--attach",
        f"@{path}",
        "--suppress-data",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    queue_id_of(result.stdout)
    server.wait_idle()
    (message,) = messages_of(server, "alice")
    assert message.get_content_type() == "multipart/mixed"
    text, attachment = (part for part in message.walk() if not part.is_multipart())
    assert isinstance(text, email.message.EmailMessage)
    assert isinstance(attachment, email.message.EmailMessage)
    assert text.get_content_type() == "text/plain"
    assert text.get_content().rstrip("\n") == "see attachment"
    assert attachment.get_content_type() == "application/octet-stream"
    assert attachment["Content-Transfer-Encoding"].lower() == "base64"
    assert attachment.get_filename() == "blob.bin"
    assert attachment.get_content() == blob


ENVELOPE = ["EHLO client.test", f"MAIL FROM:<{SENDER}>", "RCPT TO:<alice@example.test>"]


@pytest.mark.parametrize(
    ("stop_point", "commands_sent"), [("BANNER", 0), ("EHLO", 1), ("MAIL", 2), ("RCPT", 3)]
)
def test_quit_after(server: ThreadedServer, stop_point: str, commands_sent: int) -> None:
    """Sessions that end early end cleanly, with 221 (enhanced code only once EHLO said so)."""
    result = swaks(server, "--to", "alice@example.test", "--quit-after", stop_point)
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line[4:] for line in result.stdout.splitlines() if line.startswith(" -> ")]
    assert commands == [*ENVELOPE[:commands_sent], "QUIT"]
    replies = [line for line in result.stdout.splitlines() if line.startswith(("<-", "<**"))]
    closing = "221 mx.example.test" if commands_sent == 0 else "221 2.0.0 mx.example.test"
    assert replies[-1].startswith(f"<-  {closing} ")
    assert not any(reply.startswith("<**") for reply in replies)
    server.wait_idle()
    assert delivered_files(server) == []


def test_classic_smtp_with_custom_data(server: ThreadedServer) -> None:
    """``--protocol SMTP`` says HELO; with no EHLO there are no enhanced status codes."""
    data = "Subject: custom\nX-Test: 1\n\nline one\n.hidden dot"
    result = swaks(server, "--protocol", "SMTP", "--to", "bob@example.test", "--data", data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " -> HELO client.test" in result.stdout
    assert " -> EHLO" not in result.stdout
    assert " -> ..hidden dot" in result.stdout  # swaks quoted the leading dot
    assert "<-  250 mx.example.test" in result.stdout
    assert "<-  250 Ok" in result.stdout
    match = re.search(r"^<-  250 Ok: queued as (?P<id>[0-9A-Z]+)$", result.stdout, re.MULTILINE)
    assert match is not None, result.stdout
    assert "<-  221 mx.example.test" in result.stdout
    server.wait_idle()
    (message,) = messages_of(server, "bob")
    assert f"with SMTP id {match['id']}" in message["Received"]
    assert message["Subject"] == "custom"
    assert message["X-Test"] == "1"
    assert body_of(message) == "line one\n.hidden dot\n"


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture
def tls_server(tmp_path: Path, ca: TestCA) -> Iterator[ThreadedServer]:
    """STARTTLS on the first listener, implicit TLS on the second."""
    config = make_config(
        tmp_path / "data", listen=tls_listeners(), tls=tls_config(ca.cert, tmp_path / "tls")
    )
    with ThreadedServer(config) as running:
        yield running


def verify_with(ca: TestCA, directory: Path) -> list[str]:
    return ["--tls-verify", "--tls-ca-path", str(ca.write_ca(directory / "ca.pem"))]


def assert_received_over_tls(server: ThreadedServer, queue_id: str) -> None:
    server.wait_idle()
    (message,) = messages_of(server, "alice")
    received = " ".join(message["Received"].split())
    assert received.startswith("from client.test (unknown [127.0.0.1]) (using TLSv1.")
    assert f"with ESMTPS id {queue_id}" in received


def test_starttls(tls_server: ThreadedServer, ca: TestCA, tmp_path: Path) -> None:
    result = swaks(tls_server, "--tls", *verify_with(ca, tmp_path), "--to", "alice@example.test")
    assert result.returncode == 0, result.stdout + result.stderr
    transcript = result.stdout
    assert "<-  250-STARTTLS" in transcript
    assert " -> STARTTLS" in transcript
    assert "<-  220 2.0.0 Ready to start TLS" in transcript
    assert "=== TLS started with cipher TLSv1." in transcript
    # After TLS (lines marked ~): a new EHLO, and STARTTLS is no longer offered.
    assert " ~> EHLO client.test" in transcript
    assert "<~  250-STARTTLS" not in transcript
    assert_received_over_tls(tls_server, queue_id_of(transcript.replace("<~", "<-")))


def test_implicit_tls(tls_server: ThreadedServer, ca: TestCA, tmp_path: Path) -> None:
    port = tls_server.address_of(1)[1]
    result = swaks(
        tls_server, "--tlsc", *verify_with(ca, tmp_path), "--to", "alice@example.test", port=port
    )
    assert result.returncode == 0, result.stdout + result.stderr
    transcript = result.stdout
    # TLS first, then the greeting, inside it.
    assert transcript.index("=== TLS started with cipher") < transcript.index(
        "<~  220 mx.example.test ESMTP Pigeon"
    )
    assert "STARTTLS" not in transcript
    assert_received_over_tls(tls_server, queue_id_of(transcript.replace("<~", "<-")))


def test_a_certificate_from_another_ca_fails_verification(
    tls_server: ThreadedServer, tmp_path: Path
) -> None:
    stranger = TestCA()
    result = swaks(
        tls_server, "--tls", *verify_with(stranger, tmp_path), "--to", "alice@example.test"
    )
    assert result.returncode != 0
    assert "Ready to start TLS" in result.stdout
    assert "queued as" not in result.stdout
    assert delivered_files(tls_server) == []


def test_starttls_required_but_not_offered(server: ThreadedServer) -> None:
    result = swaks(server, "--tls", "--to", "alice@example.test")
    assert result.returncode != 0
    assert " -> STARTTLS" not in result.stdout  # swaks saw it was not offered
    assert delivered_files(server) == []
