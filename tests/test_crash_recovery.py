"""Crash recovery of a real ``pigeon serve`` process, and its graceful stop.

DESIGN.md: a 250 to the end of DATA means the message is on disk, so nothing acknowledged is
ever lost; a crash loses only what was never acknowledged; and delivery after a restart is
idempotent, so nothing is delivered twice. These tests SIGKILL the server while several
clients are sending, start it again on the same data directory, and count: every message
that got its 250 must be in alice's Maildir exactly once, and no message may be there twice.
A message whose DATA was sent but whose 250 never came may or may not be there (the server
may have stored it just before dying), but never twice.

The server's log (stderr) is read all the time by a thread: it says when recovery is done,
and a full pipe would otherwise block the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from pigeon.queue.spool import Spool
from tests.servers import PigeonProcess, wait_for

SENDER = "carol@remote.test"
RECIPIENT = "alice@example.test"
CLIENTS = 6
MAX_MESSAGES_PER_CLIENT = 2000  # bounds each client's loop; the kill comes long before
BIG_LINES = 40_000  # about 1.2 MiB: bigger than the spool's in-memory limit, so it spills
QUEUED = re.compile(rb"^2\.0\.0 Ok: queued as (?P<id>[0-9A-Z]+)$")


def serve_args(data_dir: Path) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "mx.example.test",
        "--domain",
        "example.test",
        "--user",
        "alice",
        "--data-dir",
        str(data_dir),
    ]


class ServerLog:
    """Reads a server's stderr in a thread, so the pipe never fills, and keeps every line."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="pigeon-stderr", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            with self._lock:
                self._lines.append(line)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def count(self, needle: str) -> int:
        with self._lock:
            return sum(needle in line for line in self._lines)

    def tail(self, lines: int = 40) -> str:
        with self._lock:
            return "".join(self._lines[-lines:])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@contextlib.contextmanager
def pigeon(data_dir: Path, cwd: Path) -> Iterator[tuple[PigeonProcess, ServerLog]]:
    """``pigeon serve`` on the data directory; killed on the way out if still running."""
    process = PigeonProcess(serve_args(data_dir), cwd=cwd)
    assert process.process.stderr is not None
    assert process.process.stdout is not None
    log = ServerLog(process.process.stderr)
    try:
        yield process, log
    finally:
        process.kill()
        log.join(10)
        process.process.stdout.close()
        process.process.stderr.close()


def wait_or_explain(
    condition: Callable[[], bool], what: str, log: ServerLog, timeout: float = 20.0
) -> None:
    try:
        wait_for(condition, timeout, what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log, last lines ---\n{log.tail()}") from None


def message_body(message_id: str) -> str:
    """The body of a numbered message; messages of client 0 are big enough to spill."""
    lines = BIG_LINES if message_id.startswith("<c0.") else 3
    return "".join(f"{message_id} line {n}\r\n" for n in range(lines))


def message_bytes(message_id: str) -> bytes:
    return (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: crash test {message_id}\r\n"
        f"Message-ID: {message_id}\r\n\r\n{message_body(message_id)}"
    ).encode("ascii")


class Traffic:
    """Client threads that send numbered messages until stopped or the server goes away.

    ``acked`` maps the Message-ID of every message that got 250 to the queue id in that
    reply; ``attempted`` holds every Message-ID whose transaction was begun.
    """

    def __init__(self, port: int, clients: int = CLIENTS) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.acked: dict[str, str] = {}
        self.attempted: set[str] = set()
        self.unexpected: list[str] = []  # replies other than 2xx/3xx from a live server
        self._threads = [
            threading.Thread(target=self._client, args=(n,), name=f"client-{n}", daemon=True)
            for n in range(clients)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def acknowledged(self) -> int:
        with self._lock:
            return len(self.acked)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)
        assert not self.running(), "a client thread did not finish"

    def _client(self, n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self._port, timeout=10) as client:
                client.ehlo("client.test")
                for seq in range(1, MAX_MESSAGES_PER_CLIENT + 1):
                    if self._stop.is_set():
                        return
                    message_id = f"<c{n}.m{seq}@crash.test>"
                    with self._lock:
                        self.attempted.add(message_id)
                    if not self._send(client, message_id):
                        return
        except smtplib.SMTPResponseException as error:
            # A reply, so from a live server (a killed one says nothing): a real refusal.
            with self._lock:
                self.unexpected.append(f"client {n}: {error.smtp_code} {error.smtp_error!r}")
        except (smtplib.SMTPException, OSError):
            # The server was killed under us: what it did not acknowledge, it never promised.
            return

    def _send(self, client: smtplib.SMTP, message_id: str) -> bool:
        """One transaction; False if the server refused something it should have taken."""
        code, text = client.mail(SENDER)
        if code == 250:
            code, text = client.rcpt(RECIPIENT)
        if code == 250:
            # smtplib raises SMTPDataError (an SMTPResponseException) if DATA gets no 354.
            code, text = client.data(message_bytes(message_id))
        match = QUEUED.match(text)
        if code != 250 or match is None:
            with self._lock:
                self.unexpected.append(f"{message_id}: {code} {text!r}")
            return False
        with self._lock:
            self.acked[message_id] = match["id"].decode("ascii")
        return True


def maildir_messages(mailbox: Path) -> list[bytes]:
    """Every file in new/ and cur/. Not ``read_maildir``: :class:`mailbox.Maildir` keys a
    message by its name before ":", so a copy in new/ and the same name in cur/ (a reader
    moved the first, and a redelivery made a second) would count as one."""
    return [
        path.read_bytes()
        for sub in ("new", "cur")
        if (mailbox / sub).is_dir()
        for path in sorted((mailbox / sub).iterdir())
    ]


def split_message(raw: bytes) -> tuple[dict[str, str], bytes]:
    """(first value of each header, body) of a message as stored in the Maildir."""
    head, separator, body = raw.partition(b"\n\n")
    assert separator, raw[:300]
    headers: dict[str, str] = {}
    for line in re.sub(r"\n[ \t]", " ", head.decode("ascii")).split("\n"):
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), value.strip())
    return headers, body


def check_mailbox(mailbox: Path, traffic: Traffic) -> None:
    """Every acknowledged message exactly once, nothing twice, nothing unknown or damaged."""
    seen: Counter[str] = Counter()
    for raw in maildir_messages(mailbox):
        headers, body = split_message(raw)
        message_id = headers["message-id"]
        assert message_id in traffic.attempted, f"a message nobody sent: {raw[:300]!r}"
        seen[message_id] += 1
        expected = message_body(message_id).replace("\r\n", "\n").encode("ascii")
        assert body == expected, f"{message_id} arrived damaged"
        queue_id = traffic.acked.get(message_id)
        if queue_id is not None:
            # The copy delivered is the one that was acknowledged, not another one.
            assert f" id {queue_id}" in headers["received"], (message_id, headers["received"])
    twice = sorted(message_id for message_id, n in seen.items() if n > 1)
    assert twice == [], f"delivered more than once: {twice}"
    lost = sorted(set(traffic.acked) - set(seen))
    assert lost == [], f"acknowledged with 250 but lost: {lost}"


async def _left_in_spool(spool_dir: Path) -> list[str]:
    async with Spool(spool_dir) as spool:
        return [message.queue_id for message in await spool.recover()]


def left_in_spool(spool_dir: Path) -> list[str]:
    """Queue ids that a next start would recover (call it with no server running)."""
    return asyncio.run(_left_in_spool(spool_dir))


def kill_under_load(data_dir: Path, cwd: Path, kill_after: int) -> Traffic:
    """Start the server, send from several clients, SIGKILL it once ``kill_after`` messages
    are acknowledged (while the clients go on sending), and return what was acknowledged."""
    with pigeon(data_dir, cwd) as (process, log):
        traffic = Traffic(process.port)
        traffic.start()
        wait_or_explain(
            lambda: traffic.acknowledged() >= kill_after or not traffic.running(),
            f"{kill_after} messages acknowledged",
            log,
        )
        process.kill()  # SIGKILL, in the middle of the traffic
        assert process.process.returncode == -signal.SIGKILL
        traffic.stop()
        assert traffic.unexpected == [], traffic.unexpected
        assert traffic.acknowledged() >= kill_after, (
            f"clients stopped after {traffic.acknowledged()} messages\n{log.tail()}"
        )
    assert "Traceback" not in log.text(), log.text()  # read to the end now
    return traffic


def restart_and_drain(data_dir: Path, cwd: Path) -> int:
    """Start the server again, wait until it has delivered every message it recovered,
    stop it with SIGTERM, and return how many it recovered."""
    with pigeon(data_dir, cwd) as (process, log):
        # Recovery is logged before the listener opens, and "listening" after it.
        wait_or_explain(lambda: log.count("event=listening ") > 0, "the listening line", log)
        match = re.search(r"event=recovered messages=(\d+)", log.text())
        recovered = int(match[1]) if match else 0
        wait_or_explain(
            lambda: log.count("event=delivered ") >= recovered,
            f"delivery of {recovered} recovered messages",
            log,
        )
        assert process.terminate() == 0, log.text()
        log.join(10)
        text = log.text()
        assert "event=deferred" not in text, text
        assert "event=failed" not in text, text
        assert "Traceback" not in text, text
    return recovered


@pytest.mark.parametrize("kill_after", [1, 60, 250])
def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path, kill_after: int) -> None:
    data_dir = tmp_path / "data"
    traffic = kill_under_load(data_dir, tmp_path, kill_after)
    restart_and_drain(data_dir, tmp_path)
    mailbox = data_dir / "mail" / "example.test" / "alice"
    check_mailbox(mailbox, traffic)
    # Deliveries cut off by the kill left nothing behind in the Maildir's tmp/ either.
    assert list((mailbox / "tmp").iterdir()) == []
    # Spilled bodies of the messages cut off by the kill were removed at the restart.
    assert list((data_dir / "spool" / "tmp").iterdir()) == []
    # Everything recovered was delivered and marked done: a third start finds nothing.
    assert left_in_spool(data_dir / "spool") == []


def test_sigkill_again_while_recovering(tmp_path: Path) -> None:
    """A second crash while the recovered mail is being delivered makes no second copy."""
    data_dir = tmp_path / "data"
    traffic = kill_under_load(data_dir, tmp_path, 150)
    with pigeon(data_dir, tmp_path) as (process, _):
        process.kill()  # at once: recovered mail is being delivered now, or about to be
    restart_and_drain(data_dir, tmp_path)
    mailbox = data_dir / "mail" / "example.test" / "alice"
    check_mailbox(mailbox, traffic)
    assert list((mailbox / "tmp").iterdir()) == []
    assert left_in_spool(data_dir / "spool") == []


def delivered_then_forgotten(data_dir: Path, cwd: Path, count: int) -> list[str]:
    """Deliver ``count`` messages, SIGKILL the server, and delete the spool's done lists.

    The done lists are never fsynced (DESIGN: a lost line means a duplicate delivery, never a
    lost message), so a power cut can lose them: this is the state it leaves. The next start
    must recover every message and find that each one was delivered already.
    """
    message_ids = [f"<c1.m{seq}@crash.test>" for seq in range(1, count + 1)]
    with pigeon(data_dir, cwd) as (process, log):
        with smtplib.SMTP("127.0.0.1", process.port, timeout=10) as client:
            client.ehlo("client.test")
            for message_id in message_ids:
                assert client.sendmail(SENDER, [RECIPIENT], message_bytes(message_id)) == {}
        wait_or_explain(lambda: log.count("event=delivered ") >= count, f"{count} deliveries", log)
        process.kill()
    done_lists = list((data_dir / "spool" / "segments").glob("*.done"))
    for done_list in done_lists:
        done_list.unlink()
    return message_ids


def test_lost_done_list_makes_no_second_copy(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    mailbox = data_dir / "mail" / "example.test" / "alice"
    message_ids = delivered_then_forgotten(data_dir, tmp_path, 3)
    # A mail reader has seen the first message meanwhile: moved to cur/ and flagged.
    first = sorted((mailbox / "new").iterdir())[0]
    first.rename(mailbox / "cur" / f"{first.name}:2,S")
    assert restart_and_drain(data_dir, tmp_path) == 3
    seen = Counter(split_message(raw)[0]["message-id"] for raw in maildir_messages(mailbox))
    assert seen == Counter(message_ids)
    assert left_in_spool(data_dir / "spool") == []


def test_recovery_removes_maildir_tmp_leftovers(tmp_path: Path) -> None:
    """Regression: redelivery found the copy in new/ and returned before cleaning tmp/."""
    data_dir = tmp_path / "data"
    mailbox = data_dir / "mail" / "example.test" / "alice"
    delivered_then_forgotten(data_dir, tmp_path, 1)
    # What a SIGKILL between link() into new/ and the unlink in tmp/ leaves: a second name.
    (delivered,) = (mailbox / "new").iterdir()
    os.link(delivered, mailbox / "tmp" / f"{delivered.name},P1R0123456789abcdef")
    assert restart_and_drain(data_dir, tmp_path) == 1
    assert len(maildir_messages(mailbox)) == 1
    assert list((mailbox / "tmp").iterdir()) == []


def read_reply(reader: IO[bytes]) -> list[bytes]:
    """The lines of one (possibly multi-line) reply."""
    lines = [reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(reader.readline())
    return lines


def test_sigterm_sends_421_to_an_idle_client_and_exits_0(tmp_path: Path) -> None:
    with (
        pigeon(tmp_path / "data", tmp_path) as (process, log),
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        assert read_reply(reader)[0].startswith(b"220 mx.example.test ")
        sock.sendall(b"EHLO client.test\r\n")
        assert read_reply(reader)[-1].startswith(b"250 ")
        assert process.terminate() == 0, log.tail()
        assert reader.readline() == (
            b"421 4.3.2 mx.example.test Service not available, closing transmission channel\r\n"
        )
        assert reader.readline() == b""  # and the server closed the connection


def test_sigterm_lets_the_message_in_progress_finish(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with (
        pigeon(data_dir, tmp_path) as (process, log),
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        read_reply(reader)
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(reader)
        sock.sendall(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
        assert [read_reply(reader)[0][:3] for _ in range(3)] == [b"250", b"250", b"354"]
        message = message_bytes("<c1.m1@crash.test>")
        half = len(message) // 2
        sock.sendall(message[:half])
        process.process.send_signal(signal.SIGTERM)
        wait_or_explain(lambda: log.count("event=shutdown ") > 0, "the shutdown line", log)
        sock.sendall(message[half:] + b".\r\n")
        (reply,) = read_reply(reader)
        assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
        assert reader.readline().startswith(b"421 4.3.2 ")
        assert reader.readline() == b""
        assert process.process.wait(30) == 0, log.tail()
    # Acknowledged, so on disk: delivered before the stop, or after the next start.
    restart_and_drain(data_dir, tmp_path)
    (raw,) = maildir_messages(data_dir / "mail" / "example.test" / "alice")
    headers, _ = split_message(raw)
    assert headers["message-id"] == "<c1.m1@crash.test>"
