"""Load from Postfix's smtp-source: parallel sessions, many messages, every one delivered.

smtp-source speaks plain SMTP (HELO, one command at a time) and stops at the first reply it
did not expect, so a zero exit code already says every MAIL, RCPT and DATA got its 2xx or
3xx. The Maildir then says whether every accepted message arrived, once, and intact.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.servers import ThreadedServer, read_maildir, wait_for

# Postfix installs it in /usr/sbin, which is not on every user's PATH.
SMTP_SOURCE = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(
        SMTP_SOURCE is None,
        reason="Postfix's smtp-source is not installed (apt-get install postfix)",
    ),
]

SENDER = "sender@remote.test"
RECIPIENT = "alice@example.test"
# What smtp-source sends as the body when no -l is given.
DEFAULT_BODY = b"".join(b"La de da de da %d.\n" % n for n in range(1, 5))
RECEIVED_ID = re.compile(rb"\tby mx\.example\.test \(Pigeon\) with SMTP id (?P<id>[0-9A-Z]+)\n")


def smtp_source(server: ThreadedServer, *args: str) -> subprocess.CompletedProcess[str]:
    assert SMTP_SOURCE is not None
    command = [
        SMTP_SOURCE,
        "-M",
        "client.test",  # HELO name and Message-Id domain, instead of this machine's name
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        *args,
        f"127.0.0.1:{server.port}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def alice(server: ThreadedServer) -> Path:
    return server.config.mail_dir / "example.test" / "alice"


def wait_for_messages(server: ThreadedServer, count: int) -> list[bytes]:
    server.wait_idle(timeout=60)
    wait_for(
        lambda: len(read_maildir(alice(server))) >= count,
        timeout=30,
        what=f"{count} messages in alice's Maildir",
    )
    return read_maildir(alice(server))


def split_message(raw: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """(first value of each header, body) of a message as stored in the Maildir (LF ends)."""
    head, separator, body = raw.partition(b"\n\n")
    assert separator, raw[:300]
    headers: dict[bytes, bytes] = {}
    for line in re.sub(rb"\n[ \t]", b" ", head).split(b"\n"):
        name, _, value = line.partition(b":")
        headers.setdefault(name.lower(), value.strip())
    return headers, body


def check_envelope_and_trace(raws: list[bytes]) -> None:
    """Every message has Pigeon's trace headers and smtp-source's own, and its own queue id."""
    queue_ids = []
    for raw in raws:
        assert raw.startswith(
            b"Return-Path: <sender@remote.test>\nDelivered-To: alice@example.test\n"
            b"Received: from client.test (unknown [127.0.0.1])\n"
        ), raw[:300]
        match = RECEIVED_ID.search(raw)
        assert match is not None, raw[:300]
        queue_ids.append(match["id"])
        headers, _ = split_message(raw)
        assert headers[b"from"] == b"<sender@remote.test>"
        assert headers[b"to"] == b"<alice@example.test>"
        assert headers[b"message-id"].endswith(b"@client.test>")
        assert b"\r" not in raw  # stored with LF line ends, as Maildir readers expect
    duplicated = [queue_id for queue_id, n in Counter(queue_ids).items() if n > 1]
    assert duplicated == [], "the same message was delivered more than once"


@pytest.mark.parametrize(
    "reuse",
    [
        pytest.param(False, id="connection-per-message"),
        pytest.param(True, id="one-connection-per-session"),
    ],
)
def test_two_hundred_messages_in_ten_sessions(server: ThreadedServer, reuse: bool) -> None:
    result = smtp_source(server, "-s", "10", "-m", "200", "-c", *(["-d"] if reuse else []))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    # -c prints a running count of completed DATA commands.
    assert result.stdout.split()[-1] == "200", result.stdout[-200:]
    raws = wait_for_messages(server, 200)
    assert len(raws) == 200
    check_envelope_and_trace(raws)
    for raw in raws:
        _, body = split_message(raw)
        assert body == DEFAULT_BODY, raw
        assert len(raw) < 1000


def test_hundred_kib_messages_arrive_intact(server: ThreadedServer) -> None:
    size = 100 * 1024
    result = smtp_source(server, "-s", "5", "-m", "40", "-l", str(size), "-d")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    raws = wait_for_messages(server, 40)
    assert len(raws) == 40
    check_envelope_and_trace(raws)
    bodies = {split_message(raw)[1] for raw in raws}
    assert len(bodies) == 1, "smtp-source sends the same payload every time"
    (body,) = bodies
    # smtp-source's payload: lines of 78 characters (80 with CRLF), each a digit counting
    # 1, 2, ... 9, 0, 1 ... followed by X's, then a last line of X's; about -l bytes in all.
    lines = body.split(b"\n")
    assert lines[-1] == b"", "the body ends with a line end"
    numbered, last = lines[:-2], lines[-2]
    assert len(numbered) > 1000
    for n, line in enumerate(numbered, start=1):
        assert line == b"%d" % (n % 10) + b"X" * 77, f"line {n} of the body: {line!r}"
    assert re.fullmatch(rb"X{1,80}", last), last
    on_the_wire = len(body) + body.count(b"\n")  # each LF was a CRLF in SMTP
    assert size <= on_the_wire < size + 160
