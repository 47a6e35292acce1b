"""Limits and abuse controls: messages per session, connections per address, command rate,
the greeting delay with early-talker detection, and message rates per address and per user."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pigeon.config import ConfigError, Limits, Rate, load_config, parse_rate
from pigeon.policy import Admission, ClientLimits, CommandRate, RateLimiter
from tests.servers import ThreadedServer, make_config
from tests.smtp_helpers import Driver, ehlo_session, reply_lines
from tests.test_server_sessions import Client


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(tmp_path: Path, **limits: Any) -> ThreadedServer:
    config = make_config(tmp_path / "data")
    return ThreadedServer(replace(config, limits=replace(config.limits, **limits)))


def greeted(server: ThreadedServer) -> Client:
    client = Client(server.address)
    assert client.reply().startswith(b"220")
    assert client.command(b"EHLO client.test").startswith(b"250")
    return client


def send_one(client: Client) -> bytes:
    client.send(b"MAIL FROM:<bob@example.test>\r\n")
    mail = client.reply()
    if not mail.startswith(b"250"):
        return mail
    assert client.command(b"RCPT TO:<alice@example.test>").startswith(b"250")
    assert client.command(b"DATA").startswith(b"354")
    return client.command(b"Subject: x\r\n\r\nhi\r\n.")


# -- rates and parsing, no sockets ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("", None),
        ("30/minute", Rate(30, 60.0)),
        ("100 / hour", Rate(100, 3600.0)),
        ("5/Seconds", Rate(5, 1.0)),
        ("1000/day", Rate(1000, 86400.0)),
    ],
)
def test_parse_rate(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["30", "0/minute", "x/minute", "30/fortnight", "-1/hour", "/m"])
def test_parse_rate_refuses_nonsense(text: str) -> None:
    with pytest.raises(ConfigError, match=r"limits\.x"):
        parse_rate(text, "limits.x")


def test_rate_limiter_allows_a_burst_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    rate = Rate(3, 60.0)
    key = ("ip", "192.0.2.1")
    assert [limiter.allow((key, rate)) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow((("ip", "192.0.2.2"), rate))  # another client has its own bucket
    clock.now += 20  # a third of a minute: one message
    assert limiter.allow((key, rate))
    assert not limiter.allow((key, rate))


def test_client_limits_per_address_and_per_user() -> None:
    clock = Clock()
    limits = Limits(message_rate_per_ip="2/minute", message_rate_per_user="3/hour")
    trusted = "10.0.0.1"
    client = ClientLimits(limits, is_exempt=lambda ip: ip == trusted, clock=clock)
    assert client.check_message("192.0.2.1") is None
    assert client.check_message("192.0.2.1") is None
    refusal = client.check_message("192.0.2.1")
    assert refusal is not None
    assert str(refusal) == "450 4.7.1 Too much mail from 192.0.2.1; try again later"
    assert all(client.check_message(trusted) is None for _ in range(10))
    # The user's rate follows the user from any address (the trusted one included).
    for address in ("198.51.100.1", trusted, "198.51.100.2"):
        assert client.check_message(address, "carol@example.test") is None
    refusal = client.check_message("198.51.100.3", "carol@example.test")
    assert refusal is not None
    assert "user carol@example.test" in str(refusal)
    # A refusal took no token from the address that was still within its rate.
    assert client.check_message("198.51.100.3") is None


def test_connections_per_address_are_counted_and_released() -> None:
    client = ClientLimits(Limits(connections_per_ip=2), is_exempt=lambda ip: ip == "10.0.0.1")
    assert client.open_connection("192.0.2.1") is Admission.COUNTED
    assert client.open_connection("192.0.2.1") is Admission.COUNTED
    assert client.open_connection("192.0.2.1") is Admission.REFUSED
    assert client.open_connection("192.0.2.2") is Admission.COUNTED
    client.close_connection("192.0.2.1")
    assert client.open_connection("192.0.2.1") is Admission.COUNTED
    assert client.connections_from("192.0.2.1") == 2
    # A trusted address, or any with no limit set, is let in without being counted.
    assert {client.open_connection("10.0.0.1") for _ in range(3)} == {Admission.UNCOUNTED}
    unlimited = ClientLimits(Limits(connections_per_ip=0))
    assert unlimited.open_connection("192.0.2.1") is Admission.UNCOUNTED


def test_command_budget_is_enforced_by_the_core_within_a_pipelined_batch() -> None:
    driver = ehlo_session()
    driver.conn.command_budget = 2
    out = driver.feed(b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert reply_lines(out) == [
        "250 2.0.0 Ok",
        "250 2.0.0 Ok",
        "421 4.7.0 mx.example.test Too many commands, slow down; closing",
    ]
    assert driver.closed


def test_command_rate_refills() -> None:
    clock = Clock()
    rate = CommandRate(60, clock=clock)
    assert rate.grant(None) == 60
    assert rate.grant(10) == 10  # 50 used
    clock.now += 5
    assert rate.grant(10) == 15  # none used since; five seconds gave five
    clock.now += 3600
    assert rate.grant(15) == 60


def test_core_without_a_budget_never_limits() -> None:
    driver = Driver()
    driver.greeting()
    assert driver.conn.command_budget is None


# -- over real sockets ------------------------------------------------------------------------
def test_messages_per_session(tmp_path: Path) -> None:
    with limited(tmp_path, messages_per_session=2) as server:
        client = greeted(server)
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        refusal = send_one(client)
        assert refusal.startswith(b"421 4.7.0 mx.example.test Too many messages")
        assert client.closed()
        client.close()
        # A new session starts counting again.
        client = greeted(server)
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        client.close()


def test_connections_per_ip(tmp_path: Path) -> None:
    with limited(tmp_path, connections_per_ip=2) as server:
        first, second = greeted(server), greeted(server)
        third = Client(server.address)
        assert third.reply() == (b"421 mx.example.test Too many connections from 127.0.0.1\r\n")
        assert third.closed()
        third.close()
        first.command(b"QUIT")
        first.close()
        deadline = time.monotonic() + 5
        while True:  # the server notices the hang-up a moment later
            fourth = Client(server.address)
            if fourth.reply().startswith(b"220") or time.monotonic() > deadline:
                break
            fourth.close()
            time.sleep(0.05)
        assert fourth.command(b"NOOP").startswith(b"250")
        fourth.close()
        second.close()


def test_trusted_networks_are_exempt_from_the_per_address_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path / "data", trusted_networks=("127.0.0.0/8",))
    config = replace(config, limits=replace(config.limits, connections_per_ip=1))
    with ThreadedServer(config) as server:
        clients = [greeted(server) for _ in range(3)]
        for client in clients:
            client.close()


def test_commands_per_minute(tmp_path: Path) -> None:
    with limited(tmp_path, commands_per_minute=5) as server:
        client = greeted(server)  # EHLO is the first
        client.send(b"NOOP\r\n" * 6)
        replies = [client.reply() for _ in range(5)]
        assert replies[:4] == [b"250 2.0.0 Ok\r\n"] * 4
        assert replies[4] == b"421 4.7.0 mx.example.test Too many commands, slow down; closing\r\n"
        assert client.closed()
        client.close()


def test_early_talker_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with limited(tmp_path, greeting_delay=1.0) as server:
        sock = socket.create_connection(server.address, timeout=10)
        sock.sendall(b"EHLO spammer.test\r\nMAIL FROM:<x@spam.test>\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        sock.close()
        assert data == b"554 mx.example.test Protocol error: talking before the greeting\r\n"
        # A client that waits gets the greeting after the delay, and nothing else differs.
        started = time.monotonic()
        client = greeted(server)
        assert time.monotonic() - started >= 0.9
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        client.close()
    assert "event=early_talker" in caplog.text


def test_message_rate_per_ip(tmp_path: Path) -> None:
    with limited(tmp_path, message_rate_per_ip="2/hour") as server:
        client = greeted(server)
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        assert send_one(client).startswith(b"250 2.0.0 Ok: queued")
        assert send_one(client) == (b"450 4.7.1 Too much mail from 127.0.0.1; try again later\r\n")
        assert client.command(b"NOOP").startswith(b"250")  # the session goes on
        client.close()


def test_limits_load_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        '[limits]\nmessage_rate_per_ip = "30/minute"\ngreeting_delay = 2.5\n'
        "connections_per_ip = 5\n"
    )
    limits = load_config(path).limits
    assert (limits.message_rate_per_ip, limits.greeting_delay) == ("30/minute", 2.5)
    path.write_text('[limits]\nmessage_rate_per_user = "lots"\n')
    with pytest.raises(ConfigError, match=r"limits\.message_rate_per_user"):
        load_config(path)
    path.write_text("[limits]\nmessage_rate_per_ip = 30\n")
    with pytest.raises(ConfigError, match=r"limits\.message_rate_per_ip"):
        load_config(path)
