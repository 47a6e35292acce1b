"""SEND, SOML and SAML (RFC 821 section 3.5) to users' terminals: ``pigeon watch`` and the
library's ``open_terminal``, against a running server driven by smtplib."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pigeon.auth import UserStore
from pigeon.config import ListenerConfig
from pigeon.delivery.terminal import TerminalMessage, TerminalRegistry, open_terminal
from pigeon.queue.admin import QueueAdmin
from pigeon.queue.envelope import Envelope
from tests.servers import PigeonProcess, ThreadedServer, make_config, read_maildir, wait_for

PASSWORD = "correct horse battery staple"
MESSAGE = b"From: carol@remote.test\r\nSubject: lunch?\r\n\r\nAt noon, by the pigeons.\r\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    listener = ListenerConfig(address="127.0.0.1:0", send_commands=True)
    config = make_config(tmp_path / "data", listen=(listener,))
    config.data_dir.mkdir(parents=True)
    store = UserStore(config.users_db)
    store.add("alice@example.test", PASSWORD)
    store.close()
    with ThreadedServer(config) as running:
        yield running


def mailbox(server: ThreadedServer, user: str) -> Path:
    return server.config.mail_dir / "example.test" / user


class LibraryTerminal:
    """A terminal registered through the library API, on an event loop in a thread."""

    def __init__(self, data_dir: Path, address: str) -> None:
        self.messages: queue.Queue[TerminalMessage] = queue.Queue()
        self._data_dir, self._address = data_dir, address
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with open_terminal(self._data_dir, self._address, self.messages.put):
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> LibraryTerminal:
        self._thread.start()
        assert self._ready.wait(10), "the terminal did not open"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def classic(server: ThreadedServer, verb: str, recipients: list[str]) -> list[tuple[int, bytes]]:
    """One SEND/SOML/SAML transaction; the RCPT replies (DATA only if one was accepted)."""
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        code, text = client.docmd(f"{verb} FROM:<carol@remote.test>")
        assert code == 250, text
        answers = [client.rcpt(r) for r in recipients]
        if any(code == 250 for code, _ in answers):
            code, text = client.data(MESSAGE)
            assert code == 250, text
    return answers


def test_watcher_gets_a_send_while_an_absent_user_gets_450(server: ThreadedServer) -> None:
    data_dir = server.config.data_dir
    watcher = subprocess.Popen(
        [
            *(sys.executable, "-m", "pigeon", "watch", "alice@example.test"),
            *("--data-dir", str(data_dir), "--password-stdin"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: queue.Queue[str] = queue.Queue()
    try:
        assert watcher.stdin is not None
        assert watcher.stdout is not None
        watcher.stdin.write(PASSWORD + "\n")
        watcher.stdin.close()
        stdout = watcher.stdout

        def read_lines() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=read_lines, daemon=True).start()
        assert "is logged on" in lines.get(timeout=20)

        answers = classic(server, "SEND", ["alice@example.test", "bob@example.test"])
        assert answers[0][0] == 250
        assert answers[1][0] == 450
        assert answers[1][1].startswith(b"4.2.1 <bob@example.test>: user not logged on")

        shown = [lines.get(timeout=10) for _ in range(5)]
        assert shown[0].startswith("--- message from <carol@remote.test> to <alice@example.test>")
        assert "Subject: lunch?\n" in shown
        assert "At noon, by the pigeons.\n" in shown
        server.wait_idle()
        assert read_maildir(mailbox(server, "alice")) == []  # SEND: the terminal only
    finally:
        watcher.terminate()
        watcher.wait(10)
        for stream in (watcher.stdout, watcher.stderr):
            if stream is not None:
                stream.close()
    assert watcher.returncode == 0
    # Logged off: the registration went with it, and SEND is refused again.
    assert not TerminalRegistry(data_dir).logged_on("alice@example.test")
    assert classic(server, "SEND", ["alice@example.test"])[0][0] == 450


def test_soml_goes_to_the_terminal_or_else_the_mailbox(server: ThreadedServer) -> None:
    assert classic(server, "SOML", ["alice@example.test"])[0][0] == 250
    wait_for(lambda: len(read_maildir(mailbox(server, "alice"))) == 1, what="the mailbox copy")
    with LibraryTerminal(server.config.data_dir, "Alice@Example.test") as terminal:
        assert classic(server, "SOML", ["alice@example.test"])[0][0] == 250
        message = terminal.messages.get(timeout=10)
        assert message.subject == "lunch?"
        assert message.sender == "carol@remote.test"
        server.wait_idle()
    assert len(read_maildir(mailbox(server, "alice"))) == 1  # shown, not filed


def test_saml_goes_to_both(server: ThreadedServer) -> None:
    with LibraryTerminal(server.config.data_dir, "alice@example.test") as terminal:
        assert classic(server, "SAML", ["alice@example.test", "bob@example.test"]) == [
            (250, b"2.1.5 Ok"),
            (250, b"2.1.5 Ok"),
        ]
        assert terminal.messages.get(timeout=10).text == "At noon, by the pigeons.\n"
        wait_for(lambda: len(read_maildir(mailbox(server, "alice"))) == 1, what="alice's copy")
        wait_for(lambda: len(read_maildir(mailbox(server, "bob"))) == 1, what="bob's copy")
        assert terminal.messages.empty()


def test_send_to_a_user_of_another_server_is_refused(server: ThreadedServer) -> None:
    answers = classic(server, "SEND", ["dave@remote.test", "nobody@example.test"])
    assert answers[0][0] == 550  # not relayed, as MAIL would not be
    assert answers[1][0] == 550


def test_ehlo_does_not_list_them_and_help_does(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        code, text = client.ehlo("client.test")
        assert code == 250
        assert not {b"SEND", b"SOML", b"SAML"} & set(text.split())
        code, text = client.docmd("HELP")
        assert code == 214
        assert b"SEND SOML SAML" in text


def test_off_by_default_with_502(tmp_path: Path) -> None:
    with (
        ThreadedServer(make_config(tmp_path / "data")) as server,
        smtplib.SMTP(*server.address, timeout=10) as client,
    ):
        client.ehlo("client.test")
        for verb in ("SEND", "SOML", "SAML"):
            assert client.docmd(f"{verb} FROM:<carol@remote.test>")[0] == 502
        assert client.docmd("MAIL FROM:<carol@remote.test>")[0] == 250


def test_registrations_are_private_and_go_when_the_terminal_closes(tmp_path: Path) -> None:
    registry = TerminalRegistry(tmp_path)

    async def scenario() -> None:
        async with registry.open("alice@example.test", lambda message: None) as path:
            assert registry.logged_on("ALICE@example.test")
            assert not registry.logged_on("bob@example.test")
            assert registry.directory.stat().st_mode & 0o777 == 0o700
            assert path.stat().st_mode & 0o777 == 0o600

    asyncio.run(scenario())
    assert list(registry.directory.iterdir()) == []
    assert not registry.logged_on("alice@example.test")


def test_a_dead_terminal_is_forgotten_on_connect_failure(tmp_path: Path) -> None:
    registry = TerminalRegistry(tmp_path)
    kept: list[bytes] = []

    async def register_and_copy() -> None:
        async with registry.open("alice@example.test", lambda message: None) as path:
            kept.append(path.name.encode())
            kept.append(path.read_bytes())

    asyncio.run(register_and_copy())
    name, record = kept[0].decode(), kept[1]
    (registry.directory / name).write_bytes(record)  # as if the process had been killed
    assert not registry.logged_on("alice@example.test")
    assert not (registry.directory / name).exists()


def test_a_stranger_without_the_token_shows_nothing(tmp_path: Path) -> None:
    registry = TerminalRegistry(tmp_path)
    shown: list[TerminalMessage] = []

    async def scenario() -> None:
        async with registry.open("alice@example.test", shown.append) as path:
            name = json.loads(path.read_bytes())["socket"]
            reader, writer = await asyncio.open_unix_connection(name)
            head = {"token": "guess", "sender": "x@y", "recipient": "alice@example.test"}
            writer.write(json.dumps(head | {"queue_id": "Q", "received_at": 0, "size": 2}).encode())
            writer.write(b"\nhi")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()

    asyncio.run(scenario())
    assert shown == []


def test_old_spool_records_read_as_plain_mail() -> None:
    old = b'{"sender":"a@b.test","recipients":["c@d.test"]}'
    assert Envelope.from_json(old).mode == "mail"
    send = Envelope("a@b.test", ("c@d.test",), mode="send")
    assert Envelope.from_json(send.to_json()).mode == "send"
    assert b"mode" not in Envelope("a@b.test", ("c@d.test",)).to_json()


def test_a_send_whose_user_logged_off_meanwhile_is_returned(server: ThreadedServer) -> None:
    with LibraryTerminal(server.config.data_dir, "alice@example.test") as terminal:
        client = smtplib.SMTP(*server.address, timeout=10)
        client.ehlo("client.test")
        assert client.docmd("SEND FROM:<carol@remote.test>")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
    assert terminal.messages.empty()
    with client:
        assert client.data(MESSAGE)[0] == 250  # accepted while she was still there
    server.wait_idle()
    # The bounce to carol waits for a way to remote.test; it says why her note was returned.
    bounces = [m for m in QueueAdmin(server.config.data_dir).messages() if m.sender == ""]
    assert [m.envelope.recipients for m in bounces] == [("carol@remote.test",)]
    header = QueueAdmin(server.config.data_dir).show(bounces[0].queue_id).header
    assert header is not None
    assert "Undelivered" in header or "failure" in header.lower()
    assert read_maildir(mailbox(server, "alice")) == []


def test_every_worker_reaches_the_terminal(tmp_path: Path) -> None:
    """``pigeon serve --workers 2``: whichever worker takes the SEND finds the terminal."""
    data = tmp_path / "data"
    data.mkdir()
    store = UserStore(data / "users.db")
    store.add("alice@example.test", PASSWORD)
    store.close()
    config = tmp_path / "pigeon.toml"
    config.write_text(
        f'data_dir = "{data}"\n[[listen]]\naddress = "127.0.0.1:0"\nsend_commands = true\n'
        '[domains."example.test"]\nusers = ["alice"]\n[limits]\nmin_free_disk = 0\n'
        "[web]\nenabled = false\n"
    )
    process = PigeonProcess(["-c", str(config), "--workers", "2"], cwd=tmp_path)
    try:
        with LibraryTerminal(data, "alice@example.test") as terminal:
            for number in range(6):  # new connections, spread over the workers by the kernel
                with smtplib.SMTP("127.0.0.1", process.port, timeout=10) as client:
                    client.ehlo("client.test")
                    assert client.docmd("SEND FROM:<carol@remote.test>")[0] == 250
                    assert client.rcpt("alice@example.test")[0] == 250
                    body = MESSAGE.replace(b"lunch?", f"note {number}".encode())
                    assert client.data(body)[0] == 250
            subjects = {terminal.messages.get(timeout=10).subject for _ in range(6)}
        assert subjects == {f"note {n}" for n in range(6)}
    finally:
        process.terminate()
        process.close()
