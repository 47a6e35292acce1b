"""``pigeon serve --workers N``: several processes on one port, sharing one data directory."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pigeon.queue import Envelope, Spool
from tests.servers import PigeonProcess, read_maildir, wait_for

ARGS = [
    "--listen",
    "127.0.0.1:0",
    "--hostname",
    "mx.example.test",
    "--domain",
    "example.test",
    "--user",
    "alice",
]


def children(pid: int) -> list[int]:
    """The worker processes of a supervisor (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        return []
    workers = []
    for child in (int(p) for p in path.read_text().split()):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            workers.append(child)
    return workers


def test_workers_share_the_port_and_deliver(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = PigeonProcess([*ARGS, "--data-dir", str(data), "--workers", "3"], cwd=tmp_path)
    try:
        assert server.banner[-1].startswith("pigeon: 3 worker processes, ")
        workers = children(server.process.pid)
        assert len(workers) == 3
        for n in range(30):
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                client.sendmail(
                    "a@remote.test", ["alice@example.test"], f"Subject: {n}\r\n\r\nx\r\n"
                )
        mailbox = data / "mail" / "example.test" / "alice"
        wait_for(lambda: len(read_maildir(mailbox)) == 30, what="30 messages delivered")
        # The kernel spread the connections: more than one worker wrote spool segments.
        segments = {p.name.split("-")[0] for p in (data / "spool" / "segments").iterdir()}
        assert len(segments) >= 2
        assert server.terminate() == 0
    finally:
        server.close()


def test_killed_supervisor_takes_its_workers_with_it(tmp_path: Path) -> None:
    server = PigeonProcess(
        [*ARGS, "--data-dir", str(tmp_path / "d"), "--workers", "2"], cwd=tmp_path
    )
    workers = children(server.process.pid)
    assert len(workers) == 2
    server.close()
    deadline = time.monotonic() + 10

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    while time.monotonic() < deadline and not all(gone(p) for p in workers):
        time.sleep(0.05)
    assert all(gone(p) for p in workers), "workers outlived a SIGKILLed supervisor"


def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    server = PigeonProcess(
        [*ARGS, "--data-dir", str(tmp_path / "d"), "--workers", "2"], cwd=tmp_path
    )
    try:
        victim = children(server.process.pid)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: (
                len(children(server.process.pid)) == 2
                and victim not in children(server.process.pid)
            ),
            timeout=20,
            what="a new worker",
        )
        for _ in range(4):  # whichever worker the kernel picks answers
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                assert client.noop()[0] == 250
        assert server.terminate() == 0
    finally:
        server.close()


def test_mail_of_a_worker_that_no_longer_runs_is_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"

    async def leave_mail_in_spool_of_w7() -> str:
        spool = Spool(data / "spool", worker="w7")
        await spool.open()
        writer = spool.new_message()
        writer.write(b"Subject: orphan\r\n\r\nleft by a fifth worker\r\n")
        envelope = Envelope("a@remote.test", ("alice@example.test",), received_at=time.time())
        stored = await spool.commit(writer, envelope)
        await spool.close()
        return stored.queue_id

    queue_id = asyncio.run(leave_mail_in_spool_of_w7())
    server = PigeonProcess([*ARGS, "--data-dir", str(data), "--workers", "2"], cwd=tmp_path)
    try:
        mailbox = data / "mail" / "example.test" / "alice"
        wait_for(lambda: len(read_maildir(mailbox)) == 1, what="the orphan delivered")
        assert b"left by a fifth worker" in read_maildir(mailbox)[0]
        assert server.terminate() == 0
    finally:
        server.close()
    # Delivered and marked done: nothing of w7 is left to recover.
    assert not [p for p in (data / "spool" / "segments").iterdir() if p.name.startswith("w7-")]
    assert queue_id


def test_limits_per_address_are_the_servers_not_each_workers(tmp_path: Path) -> None:
    """The kernel spreads one address's connections over the workers; the limits count
    them all together, as one process would."""
    config = tmp_path / "pigeon.toml"
    config.write_text('[limits]\nconnections_per_ip = 3\nmessage_rate_per_ip = "4/hour"\n')
    data = tmp_path / "data"
    server = PigeonProcess(
        [*ARGS, "-c", str(config), "--data-dir", str(data), "--workers", "2"], cwd=tmp_path
    )
    try:
        held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(8)]
        readers = [sock.makefile("rb") for sock in held]
        greetings = [reader.readline() for reader in readers]  # all before any closes
        for sock, reader in zip(held, readers, strict=True):
            reader.close()
            sock.close()
        assert sum(g.startswith(b"220 ") for g in greetings) == 3, greetings
        refused = b"421 mx.example.test Too many connections from 127.0.0.1"
        assert sum(g.startswith(refused) for g in greetings) == 5, greetings
        # Those three are over once the workers have seen them close.
        outcomes: list[int] = []
        for n in range(6):
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
                    break
                except smtplib.SMTPConnectError:
                    assert time.monotonic() < deadline, "connections still counted"
                    time.sleep(0.05)
            with client:
                try:
                    client.sendmail(
                        "a@remote.test", ["alice@example.test"], f"Subject: {n}\r\n\r\n"
                    )
                    outcomes.append(250)
                except smtplib.SMTPSenderRefused as refusal:
                    outcomes.append(refusal.smtp_code)
        assert outcomes == [250, 250, 250, 250, 450, 450]
        assert server.terminate() == 0
        # Both workers took sessions (each numbers its own from 1): the limits above held
        # across them, not merely within one.
        assert server.stderr().count("event=connect session=1 ") == 2
    finally:
        server.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_the_same_data_directory_stops_at_once(
    tmp_path: Path, workers: str
) -> None:
    """It says why, and takes nothing from the first: the table of client counts, the
    spool and the queue stay the first server's."""
    data = tmp_path / "data"
    first = PigeonProcess([*ARGS, "--data-dir", str(data), "--workers", "2"], cwd=tmp_path)
    try:
        command = [sys.executable, "-m", "pigeon", "serve", *ARGS, "--data-dir", str(data)]
        second = subprocess.run(
            [*command, "--workers", workers],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 71
        assert "pigeon serve: cannot start: " in second.stderr
        assert "Traceback" not in second.stderr
        with smtplib.SMTP("127.0.0.1", first.port, timeout=10) as client:
            client.sendmail("a@remote.test", ["alice@example.test"], "Subject: still\r\n\r\n")
        mailbox = data / "mail" / "example.test" / "alice"
        wait_for(lambda: len(read_maildir(mailbox)) == 1, what="the first server's delivery")
        assert first.terminate() == 0
    finally:
        first.close()
