"""``sendmail`` (the console script) and ``pigeon sendmail`` as real processes.

The message comes on standard input; recipients from the arguments or, with ``-t``, from
To, Cc and Bcc. Exit statuses as for ``pigeon send`` (0, 64, 69, 75).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.peers import AiosmtpdPeer, RecordingHandler, ScriptedPeer, esmtp_script
from tests.servers import ThreadedServer, read_maildir

SENDMAIL = Path(sys.executable).parent / "sendmail"
SENDER = "carol@remote.test"
ALICE = "alice@example.test"
BOB = "bob@example.test"

MESSAGE = b"Subject: from sendmail\nTo: alice@example.test\n\nHello.\n"


def sendmail(
    port: int, *args: str, stdin: bytes = MESSAGE, script: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the ``sendmail`` script (or ``python -m pigeon sendmail``) against 127.0.0.1:port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_")}
    command = [str(SENDMAIL)] if script else [sys.executable, "-m", "pigeon", "sendmail"]
    result = subprocess.run(
        [*command, "--server", f"127.0.0.1:{port}", "--timeout", "10", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def mailbox(server: ThreadedServer, user: str) -> list[tuple[bytes, EmailMessage]]:
    server.wait_idle()
    out = []
    for raw in read_maildir(server.config.mail_dir / "example.test" / user):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        out.append((raw, message))
    return out


def body_of(message: EmailMessage) -> str:
    text = message.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def test_the_console_script_is_installed() -> None:
    assert SENDMAIL.exists(), "pip install -e . installs the sendmail console script"


def test_recipients_from_arguments(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-f", SENDER, ALICE, BOB)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert message["Return-Path"] == f"<{SENDER}>"
    assert message["Subject"] == "from sendmail"
    # Filled in as Postfix's cleanup would: From (the sender), Date, Message-ID.
    assert message["From"] == SENDER
    assert email.utils.parsedate_to_datetime(str(message["Date"])) is not None
    assert str(message["Message-ID"]).endswith("@remote.test>")
    assert body_of(message) == "Hello.\n"
    assert len(mailbox(server, "bob")) == 1  # not in To, but an envelope recipient


def test_t_takes_recipients_from_headers_and_drops_bcc(server: ThreadedServer) -> None:
    stdin = (
        b"From: Carol <carol@remote.test>\n"
        b"To: Alice <alice@example.test>\n"
        b"Cc: bob@example.test\n"
        b"Bcc: postmaster@example.test\n"
        b"Subject: -t\n"
        b"\n"
        b"to all three\n"
    )
    done = sendmail(server.port, "-t", "-f", SENDER, stdin=stdin)
    assert done.returncode == 0, done.stderr
    for user in ("alice", "bob", "postmaster"):
        ((_, message),) = mailbox(server, user)
        assert message["Bcc"] is None, user
        # Only the trace fields Pigeon added for the recipient itself may name it.
        written = [
            f"{name}: {value}"
            for name, value in message.items()
            if name not in ("Return-Path", "Delivered-To", "Received")
        ]
        assert not any("postmaster" in field for field in written), written
        assert message["From"] == "Carol <carol@remote.test>"  # kept as written
        assert body_of(message) == "to all three\n"


def test_t_adds_header_recipients_to_those_given(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-t", "-f", SENDER, BOB, stdin=MESSAGE)
    assert done.returncode == 0, done.stderr
    assert len(mailbox(server, "alice")) == 1
    assert len(mailbox(server, "bob")) == 1


def test_capital_f_names_the_added_from(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-f", SENDER, "-F", "Carol Example", ALICE)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert message["From"] == f"Carol Example <{SENDER}>"


def test_capital_f_does_not_replace_an_existing_from(server: ThreadedServer) -> None:
    stdin = b"From: someone@remote.test\nSubject: x\n\nx\n"
    done = sendmail(server.port, "-f", SENDER, "-F", "Carol Example", ALICE, stdin=stdin)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert message["From"] == "someone@remote.test"


def test_default_sender_is_the_user_at_this_host(server: ThreadedServer) -> None:
    done = sendmail(server.port, ALICE)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    return_path = str(message["Return-Path"])
    assert "@" in return_path


DOTTED = b"Subject: dots\n\nbefore\n.\nafter\n"


def test_a_lone_dot_ends_the_message_by_default(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-f", SENDER, ALICE, stdin=DOTTED)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert body_of(message) == "before\n"


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_i_reads_past_a_lone_dot(server: ThreadedServer, flag: str) -> None:
    done = sendmail(server.port, flag, "-f", SENDER, ALICE, stdin=DOTTED)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert body_of(message) == "before\n.\nafter\n"  # dot-stuffed on the way, unstuffed there


def test_oi_works_through_pigeon_sendmail_too(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-oi", "-f", SENDER, ALICE, stdin=DOTTED, script=False)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert body_of(message) == "before\n.\nafter\n"


def test_pigeon_sendmail_subcommand(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-i", "-f", SENDER, ALICE, stdin=DOTTED, script=False)
    assert done.returncode == 0, done.stderr
    ((_, message),) = mailbox(server, "alice")
    assert body_of(message) == "before\n.\nafter\n"


def test_old_sendmail_options_are_accepted(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-bm", "-odi", "-oem", "-f", SENDER, ALICE)
    assert done.returncode == 0, done.stderr
    assert len(mailbox(server, "alice")) == 1


def test_8bit_message_passes_through(server: ThreadedServer) -> None:
    stdin = (
        "Subject: 8bit\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: 8bit\n\nGrüße\n"
    ).encode()
    done = sendmail(server.port, "-f", SENDER, "-v", ALICE, stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert " BODY=8BITMIME" in done.stderr
    ((raw, _),) = mailbox(server, "alice")
    assert "Grüße".encode() in raw


def test_unknown_user_exits_69(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-f", SENDER, ALICE, "nobody@example.test")
    assert done.returncode == 69
    assert "<nobody@example.test>: 550 5.1.1" in done.stderr
    assert len(mailbox(server, "alice")) == 1


def test_temporary_failure_exits_75() -> None:
    handler = RecordingHandler(refuse={ALICE: "452 4.2.2 Mailbox full, try later"})
    with AiosmtpdPeer(handler) as peer:
        done = sendmail(peer.port, "-f", SENDER, ALICE)
    assert done.returncode == 75
    assert f"<{ALICE}>: 452 4.2.2" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-f", SENDER],  # no recipients and no -t
        ["-f", SENDER, "not an address"],
        ["-f", "bad sender", ALICE],
    ],
)
def test_usage_errors_exit_64_without_connecting(args: list[str]) -> None:
    with ScriptedPeer(esmtp_script()) as peer:
        done = sendmail(peer.port, *args)
        assert peer.accepted == 0
    assert done.returncode == 64
    assert done.stderr.startswith("sendmail: ")


def test_verbose_transcript(server: ThreadedServer) -> None:
    done = sendmail(server.port, "-v", "-f", SENDER, ALICE)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert f">RCPT TO:<{ALICE}>" in lines
    assert ">Subject: from sendmail" in lines
    assert ">." in lines
    assert ">QUIT" in lines


def test_server_from_the_environment(server: ThreadedServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIGEON_")}
    env["PIGEON_SMTP_SERVER"] = f"127.0.0.1:{server.port}"
    done = subprocess.run(
        [str(SENDMAIL), "-f", SENDER, ALICE],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert len(mailbox(server, "alice")) == 1


def test_dsn_options_ask_for_a_success_report(server: ThreadedServer) -> None:
    """sendmail's -N, -R and -V (RFC 3461), as Postfix's sendmail takes them."""
    result = sendmail(
        server.port, "-f", BOB, "-N", "success", "-R", "hdrs", "-V", "order 42", ALICE
    )
    assert result.returncode == 0, result.stderr
    assert len(mailbox(server, "alice")) == 1
    ((raw, report),) = mailbox(server, "bob")
    assert report["Subject"] == "Successful Mail Delivery Report"
    assert b"Original-Envelope-Id: order 42" in raw
    assert b"Original-Recipient: rfc822; alice@example.test" in raw
    assert b"Action: delivered" in raw
    assert b"Hello." not in raw  # -R hdrs: the header only


def test_bad_dsn_options_are_usage_errors(server: ThreadedServer) -> None:
    result = sendmail(server.port, "-N", "never,success", ALICE)
    assert result.returncode == 64
    assert "notify" in result.stderr
    result = sendmail(server.port, "-R", "body", ALICE)
    assert result.returncode == 64
    assert "ret" in result.stderr
