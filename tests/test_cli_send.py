"""``pigeon send`` as a real process, against Pigeon, aiosmtpd and scripted peers.

Exit status: 0 every recipient accepted; 75 only temporary failures; 69 any permanent one;
64 a usage error (refused before connecting); 66 an input file that cannot be read.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from pigeon.config import DomainConfig
from tests.dns_server import DNSServer
from tests.peers import (
    AiosmtpdPeer,
    RecordingHandler,
    ScriptedPeer,
    TestCA,
    esmtp_script,
    listening_nowhere,
)
from tests.servers import ThreadedServer, make_config, read_maildir

SENDER = "carol@remote.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"


def pigeon_send(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_")}
    result = subprocess.run(
        [sys.executable, "-m", "pigeon", "send", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
        cwd=cwd,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def to_server(server: ThreadedServer | AiosmtpdPeer | ScriptedPeer) -> list[str]:
    return ["--server", f"127.0.0.1:{server.port}", "--timeout", "10"]


def mailbox(server: ThreadedServer, user: str) -> list[EmailMessage]:
    server.wait_idle()
    out = []
    for raw in read_maildir(server.config.mail_dir / "example.test" / user):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        out.append(message)
    return out


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    text = body.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def test_everything_accepted_exits_0(server: ThreadedServer) -> None:
    done = pigeon_send(
        *to_server(server), "--from", SENDER, "--to", ALICE, "--cc", BOB,
        "--bcc", "postmaster@example.test", "--subject", "CLI", "--body", "Hello from the CLI",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (message,) = mailbox(server, "alice")
    assert message["Subject"] == "CLI"
    assert message["From"] == SENDER
    assert message["To"] == ALICE
    assert message["Cc"] == BOB
    assert message["Bcc"] is None
    assert message["Date"] is not None
    assert message["Message-ID"] is not None
    assert plain_text(message) == "Hello from the CLI\n"
    assert len(mailbox(server, "bob")) == 1
    assert len(mailbox(server, "postmaster")) == 1  # the Bcc got its copy


def test_unknown_user_exits_69_naming_the_recipient(server: ThreadedServer) -> None:
    done = pigeon_send(
        *to_server(server), "--from", SENDER, "--to", ALICE, "--to", "nobody@example.test",
        "--subject", "S", "--body", "x",
    )  # fmt: skip
    assert done.returncode == 69
    assert "<nobody@example.test>: 550 5.1.1" in done.stderr
    assert ALICE not in done.stderr  # only the refused are reported without -v
    assert len(mailbox(server, "alice")) == 1


def test_temporary_failure_exits_75() -> None:
    handler = RecordingHandler(refuse={BOB: "451 4.3.0 Try again later"})
    with AiosmtpdPeer(handler) as peer:
        done = pigeon_send(
            *to_server(peer), "--from", SENDER, "--to", ALICE, "--to", BOB, "--body", "x"
        )
    assert done.returncode == 75, done.stderr
    assert f"<{BOB}>: 451 4.3.0 Try again later" in done.stderr
    ((_, recipients, _, _),) = handler.messages
    assert recipients == [ALICE]


def test_temporary_and_permanent_failures_exit_69() -> None:
    handler = RecordingHandler(
        refuse={BOB: "451 4.3.0 Try again later", ALICE: "550 5.1.1 No such user"}
    )
    with AiosmtpdPeer(handler) as peer:
        done = pigeon_send(
            *to_server(peer), "--from", SENDER, "--to", ALICE, "--to", BOB, "--body", "x"
        )
    assert done.returncode == 69
    assert f"<{ALICE}>: 550 5.1.1" in done.stderr
    assert f"<{BOB}>: 451 4.3.0" in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        ["--from", SENDER, "--to", "not-an-address"],
        pytest.param(
            ["--from", SENDER, "--to", ALICE, "--cc", "bob@"],
        ),
        pytest.param(
            ["--from", SENDER, "--to", ALICE, "--cc", "bob@@example.test"],
        ),
        ["--from", "carol", "--to", ALICE],
        ["--from", SENDER],  # no recipients at all
    ],
)
def test_invalid_address_exits_64_without_connecting(bad: list[str]) -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        done = pigeon_send(*to_server(peer), *bad, "--body", "x")
        assert peer.accepted == 0
    assert done.returncode == 64
    assert done.stderr.startswith("pigeon send: ")
    assert "address" in done.stderr or "recipient" in done.stderr


def test_unreachable_server_is_a_temporary_failure() -> None:
    with listening_nowhere() as port:
        done = pigeon_send(
            "--server", f"127.0.0.1:{port}", "--from", SENDER, "--to", ALICE, "--body", "x"
        )
    assert done.returncode == 75
    assert "connect" in done.stderr


def test_verbose_prints_the_conversation(server: ThreadedServer) -> None:
    done = pigeon_send(
        *to_server(server), "-v", "--helo", "client.remote.test", "--from", SENDER,
        "--to", ALICE, "--subject", "Arrows", "--body", "This is line one.\n.This is line two.",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("<220 mx.example.test")
    assert lines[1] == ">EHLO client.remote.test"
    assert "<250-mx.example.test" in lines
    mail = next(i for i, line in enumerate(lines) if line.startswith(">MAIL"))
    assert lines[mail].startswith(f">MAIL FROM:<{SENDER}> SIZE=")
    assert lines[mail + 1 : mail + 3] == [f">RCPT TO:<{ALICE}>", ">DATA"]  # pipelined
    assert lines[mail + 3 : mail + 6] == [
        "<250 2.1.0 Ok",
        "<250 2.1.5 Ok",
        "<354 End data with <CR><LF>.<CR><LF>",
    ]
    assert ">Subject: Arrows" in lines
    assert ">This is line one." in lines
    assert ">..This is line two." in lines  # the way it went on the wire
    end = lines.index(">.")
    assert lines[end + 1].startswith("<250 2.0.0 Ok: queued as ")
    assert lines[end + 2] == ">QUIT"
    assert lines[end + 3].startswith("<221 ")
    # With -v, accepted recipients are reported too, on standard output.
    assert done.stdout.startswith(f"<{ALICE}>: 250 2.0.0 Ok: queued as ")


def test_verbose_masks_auth(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text("s3cret-pass\n")
    handler = RecordingHandler(users={"carol": "s3cret-pass"})
    with AiosmtpdPeer(handler, authenticator=handler.authenticator, auth_require_tls=False) as peer:
        done = pigeon_send(
            *to_server(peer), "-v", "--user", "carol", "--password-file", str(password_file),
            "--from", SENDER, "--to", ALICE, "--body", "x",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert handler.logins == [("PLAIN", "carol")]
    assert ">AUTH PLAIN ****" in done.stderr.splitlines()
    assert "s3cret" not in done.stderr
    assert "czNjcmV0" not in done.stderr  # base64 of it
    assert "<235 " in done.stderr


def test_attachments_html_and_body_file(server: ThreadedServer, tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40 + os.urandom(4096)
    (tmp_path / "blob.bin").write_bytes(blob)
    (tmp_path / "notes.txt").write_text("plain attachment\n")
    (tmp_path / "page.html").write_text("<p>Hello <b>HTML</b></p>\n")
    (tmp_path / "body.txt").write_text("Body from a file.\nGrüße.\n")
    done = pigeon_send(
        *to_server(server), "--from", SENDER, "--to", ALICE, "--subject", "files",
        "--body-file", str(tmp_path / "body.txt"), "--html", str(tmp_path / "page.html"),
        "--attach", str(tmp_path / "blob.bin"), "--attach", str(tmp_path / "notes.txt"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (message,) = mailbox(server, "alice")
    assert plain_text(message) == "Body from a file.\nGrüße.\n"
    html = message.get_body(preferencelist=("html",))
    assert isinstance(html, EmailMessage)
    assert "<b>HTML</b>" in html.get_content()
    attachments = {a.get_filename(): a for a in message.iter_attachments()}
    assert set(attachments) == {"blob.bin", "notes.txt"}
    assert attachments["blob.bin"].get_payload(decode=True) == blob
    assert attachments["notes.txt"].get_payload(decode=True) == b"plain attachment\n"


def test_body_from_standard_input(server: ThreadedServer) -> None:
    done = pigeon_send(
        *to_server(server), "--from", SENDER, "--to", ALICE, "--subject", "stdin",
        stdin=b"Read from stdin.\n.\nStill the body after a dot line.\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (message,) = mailbox(server, "alice")
    assert plain_text(message) == "Read from stdin.\n.\nStill the body after a dot line.\n"


def test_missing_input_file_exits_66(tmp_path: Path) -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        done = pigeon_send(
            *to_server(peer), "--from", SENDER, "--to", ALICE,
            "--attach", str(tmp_path / "missing.pdf"),
        )  # fmt: skip
        assert peer.accepted == 0
    assert done.returncode == 66
    assert "missing.pdf" in done.stderr


def test_user_without_password_file_is_a_usage_error() -> None:
    done = pigeon_send("--from", SENDER, "--to", ALICE, "--user", "carol", "--body", "x")
    assert done.returncode == 64
    assert "--password-file" in done.stderr


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def test_starttls_with_a_trusted_ca(ca: TestCA, tmp_path: Path) -> None:
    handler = RecordingHandler()
    cafile = ca.write_ca(tmp_path / "ca.pem")
    with AiosmtpdPeer(handler, tls_context=ca.server_context()) as peer:
        trusted = pigeon_send(
            *to_server(peer), "--starttls", "--cafile", str(cafile), "-v",
            "--from", SENDER, "--to", ALICE, "--body", "secret",
        )  # fmt: skip
        untrusted = pigeon_send(
            *to_server(peer), "--starttls", "--from", SENDER, "--to", ALICE, "--body", "x"
        )
        opted_out = pigeon_send(
            *to_server(peer), "--starttls", "--no-verify",
            "--from", SENDER, "--to", ALICE, "--body", "x",
        )  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr
    assert ">STARTTLS" in trusted.stderr.splitlines()
    assert untrusted.returncode in (69, 75)
    assert "STARTTLS" in untrusted.stderr
    assert "certificate" in untrusted.stderr.lower()
    assert opted_out.returncode == 0, opted_out.stderr
    assert len(handler.messages) == 2


def test_implicit_tls(ca: TestCA, tmp_path: Path) -> None:
    handler = RecordingHandler()
    cafile = ca.write_ca(tmp_path / "ca.pem")
    with AiosmtpdPeer(handler, ssl_context=ca.server_context()) as peer:
        done = pigeon_send(
            *to_server(peer), "--tls", "--cafile", str(cafile),
            "--from", SENDER, "--to", ALICE, "--body", "x",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(handler.messages) == 1


def test_no_tls_with_starttls_required_is_a_usage_error() -> None:
    done = pigeon_send("--no-tls", "--starttls", "--from", SENDER, "--to", ALICE)
    assert done.returncode == 2  # argparse: mutually exclusive options
    assert "not allowed with" in done.stderr


def test_mx_delivery(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data",
        domains={"dest.test": DomainConfig(users=("alice",))},
    )
    with ThreadedServer(config) as server:
        records = {("dest.test", "MX"): "10 mx.dest.test.", ("mx.dest.test", "A"): "127.0.0.1"}
        with DNSServer(records) as dns_server:
            done = pigeon_send(
                "--mx", "--resolver", dns_server.nameserver, "--mx-port", str(server.port),
                "-v", "--from", SENDER, "--to", "alice@dest.test", "--to", "x@nowhere.test",
                "--body", "direct",
            )  # fmt: skip
        server.wait_idle()
        delivered = read_maildir(server.config.mail_dir / "dest.test" / "alice")
    assert done.returncode == 69
    assert "<x@nowhere.test>: 550 5.1.2" in done.stderr
    assert "<alice@dest.test>: 250 2.0.0 Ok: queued as" in done.stdout
    assert f"(mx.dest.test[127.0.0.1]:{server.port})" in done.stdout
    assert len(delivered) == 1
