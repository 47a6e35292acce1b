"""Session behaviour over real sockets: the seed's conversation, limits, timeouts, shutdown."""

from __future__ import annotations

import logging
import re
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from pigeon.config import DomainConfig
from pigeon.queue.spool import SpoolError
from tests.servers import ThreadedServer, make_config, read_maildir, wait_for

SEED_BODY = b"From: (Ralph Martin)\r\nSubject: Arrows\r\nThis is line one.\r\nThis is line two.\r\n"


class Client:
    """A raw SMTP client: send lines exactly as given, read replies exactly as sent."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.reader = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One whole reply, all its lines."""
        lines = []
        while True:
            line = self.reader.readline()
            assert line, "connection closed before a reply"
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_seed_conversation_replays_under_rfc821_compat(tmp_path: Path) -> None:
    config = make_config(
        tmp_path / "data",
        compat="rfc821",
        domains={"cs.cf.ac.uk": DomainConfig(users=("dave",))},
    )
    with ThreadedServer(config) as server:
        client = Client(server.address)
        assert client.reply() == b"220 mx.example.test ESMTP Pigeon\r\n"
        # Each '>' line of the seed, byte for byte; each '<' line's code and wording.
        assert client.command(b"HELO") == (
            b"250 mx.example.test Hello [127.0.0.1], pleased to meet you\r\n"
        )
        assert client.command(b"MAIL From: <(Ralph Martin)>") == (
            b"250 <(Ralph Martin)>... Sender ok\r\n"
        )
        assert client.command(b"RCPT To: <dave@cs.cf.ac.uk>") == (
            b"250 <dave@cs.cf.ac.uk>... Recipient ok\r\n"
        )
        assert client.command(b"DATA") == (b'354 Enter mail, end with "." on a line by itself\r\n')
        client.send(SEED_BODY)
        accepted = client.command(b".")
        match = re.fullmatch(rb"250 ([0-9A-Z]+) Message accepted for delivery\r\n", accepted)
        assert match, accepted
        assert client.command(b"QUIT") == b"221 mx.example.test closing connection\r\n"
        assert client.closed()
        client.close()
        server.wait_idle()
    (raw,) = read_maildir(config.mail_dir / "cs.cf.ac.uk" / "dave")
    assert raw.startswith(b"Return-Path: <>\nDelivered-To: dave@cs.cf.ac.uk\nReceived: ")
    assert f"id {match.group(1).decode()}".encode() in raw
    assert raw.endswith(SEED_BODY.replace(b"\r\n", b"\n"))


def test_seed_conversation_is_refused_where_rfc5321_forbids_it(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    helo = client.command(b"HELO")
    assert helo.startswith(b"501 ")
    assert b"domain is missing" in helo
    assert client.command(b"HELO client.test").startswith(b"250 mx.example.test")
    comment = client.command(b"MAIL From: <(Ralph Martin)>")
    assert comment.startswith(b"501 ")
    assert b"comments are not allowed" in comment
    bare = client.command(b"MAIL From: ralph@remote.test")
    assert bare.startswith(b"501 ")
    assert b"<>" in bare
    client.close()


def test_help_vrfy_expn_and_classic_commands(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    help_all = client.command(b"HELP")
    assert help_all.startswith(b"214-2.0.0 ")
    assert b"SAML" in help_all
    assert b"TURN" in help_all
    assert client.command(b"HELP RCPT").startswith(b"214-2.0.0 RCPT TO:<recipient>")
    assert client.command(b"VRFY alice").startswith(b"252 2.5.0 ")
    assert client.command(b"EXPN staff").startswith(b"502 5.5.1 ")
    for verb in (b"SEND", b"SOML", b"SAML"):
        assert client.command(verb + b" FROM:<a@remote.test>").startswith(b"502 5.5.1 ")
    assert client.command(b"TURN").startswith(b"502 5.5.1 ")
    assert client.command(b"NOOP").startswith(b"250 2.0.0 ")
    client.close()


def test_vrfy_on_answers_from_the_directory(tmp_path: Path) -> None:
    with ThreadedServer(make_config(tmp_path / "data", vrfy="on")) as server:
        client = Client(server.address)
        client.reply()
        client.command(b"EHLO client.test")
        assert client.command(b"VRFY alice") == b"250 2.1.5 <alice@example.test>\r\n"
        assert client.command(b"VRFY carol").startswith(b"550 5.1.1 ")
        client.close()


def test_ten_errors_end_the_session_with_421(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    for _ in range(9):
        assert client.command(b"BOGUS").startswith(b"500 ")
    client.send(b"BOGUS\r\n")
    assert client.reply().startswith(b"500 ")
    assert client.reply().startswith(b"421 mx.example.test Too many errors")
    assert client.closed()
    client.close()


def test_long_lines_and_garbage_get_500_and_the_session_goes_on(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    assert client.command(b"NOOP " + b"x" * 600).startswith(b"500 5.5.2 Line too long")
    assert client.command(b"\x00\xff\xfe binary").startswith(b"500 5.5.2 ")
    client.send(b"NOOP\n")
    assert client.reply().startswith(b"500 5.5.2 ")
    assert client.command(b"EHLO client.test").startswith(b"250-mx.example.test")
    client.close()


def test_smuggled_message_is_refused_and_never_split(server: ThreadedServer) -> None:
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    client.command(b"MAIL FROM:<a@remote.test>")
    client.command(b"RCPT TO:<alice@example.test>")
    assert client.command(b"DATA").startswith(b"354 ")
    client.send(
        b"Subject: first\r\n\r\nhello\r\n\n.\n"
        b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    refused = client.reply()
    assert refused.startswith(b"554 5.6.0 ")
    assert b"bare" in refused
    assert client.command(b"QUIT").startswith(b"221 ")
    client.close()
    server.wait_idle()
    assert read_maildir(server.config.mail_dir / "example.test" / "alice") == []
    assert read_maildir(server.config.mail_dir / "example.test" / "bob") == []


def test_idle_client_times_out_with_421(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, command_timeout=0.3))
    with ThreadedServer(config) as server:
        client = Client(server.address)
        client.reply()
        assert client.reply().startswith(b"421 mx.example.test Timeout")
        assert client.closed()
        client.close()


def test_connection_limit_turns_the_next_client_away(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, connections=2))
    with ThreadedServer(config) as server:
        first, second = Client(server.address), Client(server.address)
        assert first.reply().startswith(b"220 ")
        assert second.reply().startswith(b"220 ")
        third = Client(server.address)
        assert third.reply().startswith(b"421 mx.example.test Too many connections")
        assert third.closed()
        for client in (first, second, third):
            client.close()


def test_low_disk_refuses_mail_with_452(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data")
    config = replace(config, limits=replace(config.limits, min_free_disk=1 << 62))
    with ThreadedServer(config) as server:
        client = Client(server.address)
        client.reply()
        client.command(b"EHLO client.test")
        assert client.command(b"MAIL FROM:<a@remote.test>").startswith(b"452 4.3.1 ")
        client.close()


def test_spool_failure_gives_451_and_nothing_is_delivered(
    server: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_commit(*args: object, **kwargs: object) -> None:
        raise SpoolError("injected: disk on fire")

    monkeypatch.setattr(server.server.context.spool, "commit", failing_commit)
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    client.command(b"MAIL FROM:<a@remote.test>")
    client.command(b"RCPT TO:<alice@example.test>")
    client.command(b"DATA")
    client.send(b"Subject: lost?\r\n\r\nno\r\n")
    assert client.command(b".").startswith(b"451 4.3.0 ")
    # The session goes on after the failure.
    assert client.command(b"NOOP").startswith(b"250 ")
    client.close()
    server.wait_idle()
    assert read_maildir(server.config.mail_dir / "example.test" / "alice") == []


def test_shutdown_says_421_to_idle_sessions_and_finishes_messages(tmp_path: Path) -> None:
    server = ThreadedServer(make_config(tmp_path / "data")).__enter__()
    idle, busy = Client(server.address), Client(server.address)
    idle.reply()
    busy.reply()
    busy.command(b"EHLO client.test")
    busy.command(b"MAIL FROM:<a@remote.test>")
    busy.command(b"RCPT TO:<alice@example.test>")
    busy.command(b"DATA")
    busy.send(b"Subject: in flight\r\n\r\nstill coming")
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    # No EHLO from this client: no enhanced status code (RFC 2034 section 3).
    assert idle.reply().startswith(b"421 mx.example.test Service not available")
    assert idle.closed()
    # The message under way is finished and acknowledged, then the session is closed.
    busy.send(b"\r\n.\r\n")
    assert busy.reply().startswith(b"250 2.0.0 Ok: queued as ")
    assert busy.reply().startswith(b"421 4.3.2 ")
    stopper.join(30)
    assert not stopper.is_alive()
    idle.close()
    busy.close()
    # It was stored before the 250: a new server on the same data delivers it.
    with ThreadedServer(make_config(tmp_path / "data")) as again:
        wait_for(
            lambda: len(read_maildir(again.config.mail_dir / "example.test" / "alice")) == 1,
            what="the message acknowledged during shutdown",
        )


def test_one_log_line_per_message(server: ThreadedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pigeon")
    logging.getLogger("pigeon").propagate = True
    client = Client(server.address)
    client.reply()
    client.command(b"EHLO client.test")
    client.command(b"MAIL FROM:<a@remote.test>")
    client.command(b"RCPT TO:<alice@example.test>")
    client.command(b"DATA")
    client.send(b"Subject: log\r\n\r\nx\r\n")
    queue_id = client.command(b".").split()[-1].decode()
    client.command(b"QUIT")
    client.close()
    server.wait_idle()
    messages = [r.getMessage() for r in caplog.records]
    (line,) = [m for m in messages if m.startswith("event=message ")]
    assert f"queue_id={queue_id}" in line
    assert "client=127.0.0.1" in line
    assert "from=<a@remote.test>" in line
    assert "to=<alice@example.test>" in line
    assert "result=queued" in line
    assert any(m.startswith("event=delivered ") and queue_id in m for m in messages)
