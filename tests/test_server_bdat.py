"""BDAT, CHUNKING and BINARYMIME (RFC 3030) over real sockets: pipelined chunks, chunk sizes
that lie, and what reaches the Maildir (exactly the octets sent, or nothing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pigeon.client import SMTPClient
from tests.servers import ThreadedServer, make_config, read_maildir
from tests.test_server_sessions import Client

ALICE = "alice@example.test"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    config = make_config(tmp_path / "data")
    limits = replace(config.limits, message_size=4000, data_timeout=2, command_timeout=2)
    config = replace(config, limits=limits)
    with ThreadedServer(config) as running:
        yield running


def inbox(server: ThreadedServer) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / "example.test" / "alice")


def session(server: ThreadedServer) -> Client:
    client = Client(server.address)
    client.reply()
    ehlo = client.command(b"EHLO client.test")
    assert b"250-CHUNKING" in ehlo
    assert b"250-BINARYMIME" in ehlo
    return client


def body_of(message: bytes) -> bytes:
    """The body of a message as the Maildir keeps it (LF line ends, as Postfix writes)."""
    return message.split(b"\n\n", 1)[1]


def as_stored(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def test_pipelined_chunks_are_stored_exactly(server: ThreadedServer) -> None:
    client = session(server)
    head = b"Subject: chunks\r\n\r\n"
    part1, part2 = b".leading dot kept\r\n", b"no terminator needed"
    client.send(
        b"MAIL FROM:<bob@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
        + b"BDAT %d\r\n" % len(head + part1)
        + head
        + part1
        + b"BDAT %d LAST\r\n" % len(part2)
        + part2
        + b"QUIT\r\n"
    )
    replies = [client.reply() for _ in range(5)]
    assert replies[0].startswith(b"250 2.1.0")
    assert replies[1].startswith(b"250 2.1.5")
    assert replies[2] == b"250 2.0.0 %d octets received\r\n" % len(head + part1)
    assert replies[3].startswith(b"250 2.0.0 Ok: queued as ")
    assert replies[4].startswith(b"221")
    client.close()
    (message,) = inbox(server)
    assert body_of(message) == b".leading dot kept\nno terminator needed"


def test_a_chunk_cut_short_by_a_hang_up_stores_nothing(server: ThreadedServer) -> None:
    client = session(server)
    client.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nBDAT 500 LAST\r\nonly this")
    assert client.reply().startswith(b"250")
    assert client.reply().startswith(b"250")
    client.close()
    time.sleep(0.3)
    assert inbox(server) == []


def test_commands_after_a_chunk_that_lies_are_message_text(server: ThreadedServer) -> None:
    """The size said 60; the client sends 10 octets and then QUIT: QUIT is text, no 221 comes,
    and after the data timeout the session ends with 421 and nothing stored."""
    client = session(server)
    client.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nBDAT 60 LAST\r\n0123456789")
    assert client.reply().startswith(b"250")
    assert client.reply().startswith(b"250")
    client.send(b"QUIT\r\n")
    assert client.reply().startswith(b"421 4.4.2")  # the data timeout, not 221
    client.close()
    assert inbox(server) == []


def test_bdat_without_a_transaction_is_503_and_its_octets_are_skipped(
    server: ThreadedServer,
) -> None:
    client = session(server)
    client.send(b"BDAT 12\r\nRSET\r\nQUIT\r\nNOOP\r\n")  # "RSET\r\nQUIT\r\n": the chunk
    assert client.reply() == b"503 5.5.1 Need MAIL command before BDAT\r\n"
    assert client.reply() == b"250 2.0.0 Ok\r\n"
    client.close()


def test_data_after_bdat_is_503(server: ThreadedServer) -> None:
    client = session(server)
    client.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nBDAT 2\r\nhiDATA\r\n")
    replies = [client.reply() for _ in range(4)]
    assert replies[2] == b"250 2.0.0 2 octets received\r\n"
    assert replies[3] == b"503 5.5.1 DATA not allowed during a BDAT transaction\r\n"
    assert client.command(b"RSET").startswith(b"250")
    client.close()
    assert inbox(server) == []


def test_size_limit_applies_across_chunks(server: ThreadedServer) -> None:
    client = session(server)
    chunk = b"x" * 998 + b"\r\n"
    client.send(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\n")
    client.reply(), client.reply()
    for _ in range(4):
        assert client.command(b"BDAT 1000\r\n" + chunk[:-2]).startswith(b"250 2.0.0 1000")
    client.send(b"BDAT 1000 LAST\r\n" + chunk)
    assert client.reply().startswith(b"552 5.3.4")
    assert client.command(b"NOOP") == b"250 2.0.0 Ok\r\n"
    client.close()
    assert inbox(server) == []


def test_binarymime_refuses_data_and_keeps_any_octets(server: ThreadedServer) -> None:
    client = session(server)
    client.send(b"MAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert client.reply().startswith(b"250")
    assert client.reply().startswith(b"250")
    assert client.reply() == b"503 5.5.1 BODY=BINARYMIME requires BDAT, not DATA\r\n"
    payload = b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 4
    assert client.command(b"BDAT %d LAST\r\n" % len(payload) + payload).startswith(b"250 2.0.0 Ok")
    client.close()
    (message,) = inbox(server)
    assert body_of(message) == as_stored(bytes(range(256)) * 4)


def test_pigeons_own_client_sends_bdat(server: ThreadedServer) -> None:
    message = b"Subject: from the client\r\n\r\n" + b"line\r\n" * 300

    async def send() -> bool:
        async with SMTPClient("127.0.0.1", server.port, tls="off", timeout=10) as client:
            assert "CHUNKING" in client.extensions
            result = await client.send(
                message, sender="bob@example.test", recipients=[ALICE], chunking=True
            )
            return result.all_accepted

    assert asyncio.run(send())
    (stored,) = inbox(server)
    assert stored.endswith(as_stored(message))
