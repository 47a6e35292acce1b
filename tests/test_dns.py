"""pigeon.dns against a real DNS server on loopback (tests/dns_server.py), never the system's."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.message
import dns.query
import dns.rcode
import pytest

from pigeon.config import ConfigError, check_resolvers
from pigeon.dns import make_resolver, reverse_name
from tests.dns_server import DNSServer, Query
from tests.servers import ThreadedServer, make_config, read_maildir

PTR_V4 = "7.2.0.192.in-addr.arpa"
PTR_V6 = ipaddress.ip_address("2001:db8::7").reverse_pointer

RECORDS = {
    (PTR_V4, "PTR"): ["mail.client.test."],
    (PTR_V6, "PTR"): ["v6.client.test."],
    # Loopback has a name here, so that a lookup of it would be seen to succeed.
    ("1.0.0.127.in-addr.arpa", "PTR"): ["localhost."],
    (ipaddress.ip_address("::1").reverse_pointer, "PTR"): ["localhost."],
    ("8.2.0.192.in-addr.arpa", "A"): ["192.0.2.8"],  # a name with no PTR: NODATA
    ("example.test", "MX"): ["10 mx.example.test."],
    ("mx.example.test", "A"): ["192.0.2.25"],
}


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(RECORDS) as server:
        yield server
    assert server.errors == []


def resolver_for(server: DNSServer, timeout: float = 5.0) -> dns.asyncresolver.Resolver:
    resolver = make_resolver((server.nameserver,), timeout=timeout)
    assert resolver is not None
    return resolver


def lookup(resolver: dns.asyncresolver.Resolver | None, ip: str) -> str | None:
    return asyncio.run(reverse_name(resolver, ip))


# -- make_resolver ----------------------------------------------------------------------------


def test_no_servers_means_no_resolver() -> None:
    assert make_resolver(()) is None


@pytest.mark.parametrize(
    ("servers", "nameservers", "port"),
    [
        (("127.0.0.1:5353",), ["127.0.0.1"], 5353),
        (("127.0.0.1",), ["127.0.0.1"], 53),
        (("[::1]:5353",), ["::1"], 5353),
        (("192.0.2.1:53", "[2001:db8::1]:53"), ["192.0.2.1", "2001:db8::1"], 53),
    ],
)
def test_resolver_asks_exactly_the_servers_named(
    servers: tuple[str, ...], nameservers: list[str], port: int
) -> None:
    resolver = make_resolver(servers)
    assert resolver is not None
    # configure=False: nothing from /etc/resolv.conf is added.
    assert [str(n) for n in resolver.nameservers] == nameservers
    assert resolver.port == port
    assert resolver.search == []


def test_servers_on_different_ports_are_refused() -> None:
    with pytest.raises(ValueError, match="same port"):
        make_resolver(("127.0.0.1:5353", "127.0.0.2:5354"))


# -- reverse_name -----------------------------------------------------------------------------


def test_ptr_name_of_an_ipv4_client(dns_server: DNSServer) -> None:
    assert lookup(resolver_for(dns_server), "192.0.2.7") == "mail.client.test"
    assert dns_server.queries == [Query(PTR_V4, "PTR", "udp")]


def test_ptr_name_of_an_ipv6_client(dns_server: DNSServer) -> None:
    assert lookup(resolver_for(dns_server), "2001:db8::7") == "v6.client.test"
    assert dns_server.queries == [Query(PTR_V6, "PTR", "udp")]


def test_nxdomain_gives_none(dns_server: DNSServer) -> None:
    assert lookup(resolver_for(dns_server), "192.0.2.99") is None
    assert dns_server.queries == [Query("99.2.0.192.in-addr.arpa", "PTR", "udp")]


def test_name_without_ptr_gives_none(dns_server: DNSServer) -> None:
    assert lookup(resolver_for(dns_server), "192.0.2.8") is None
    assert dns_server.query_count == 1


def test_failing_server_gives_none() -> None:
    with DNSServer(RECORDS, rcode="SERVFAIL") as server:
        assert lookup(resolver_for(server, timeout=2.0), "192.0.2.7") is None
        assert server.query_count >= 1
    assert server.errors == []


def test_silent_server_gives_none_after_the_timeout() -> None:
    # A socket that is bound but never read: every query goes unanswered.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        resolver = make_resolver((f"127.0.0.1:{port}",), timeout=0.3)
        assert lookup(resolver, "192.0.2.7") is None


def test_no_resolver_makes_no_query(dns_server: DNSServer) -> None:
    assert lookup(None, "192.0.2.7") is None
    assert dns_server.query_count == 0


@pytest.mark.parametrize("ip", ["127.0.0.1", "127.1.2.3", "::1"])
def test_loopback_is_never_looked_up(dns_server: DNSServer, ip: str) -> None:
    assert lookup(resolver_for(dns_server), ip) is None
    assert dns_server.query_count == 0


def test_ipv4_mapped_loopback_is_never_looked_up(dns_server: DNSServer) -> None:
    assert lookup(resolver_for(dns_server), "::ffff:127.0.0.1") is None
    assert dns_server.query_count == 0


@pytest.mark.parametrize("ip", ["not-an-address", "", "192.0.2.300"])
def test_not_an_address_gives_none_without_a_query(dns_server: DNSServer, ip: str) -> None:
    assert lookup(resolver_for(dns_server), ip) is None
    assert dns_server.query_count == 0


# -- the test server itself -------------------------------------------------------------------


def test_test_server_answers_mx_and_a(dns_server: DNSServer) -> None:
    async def ask() -> tuple[list[str], list[str]]:
        resolver = resolver_for(dns_server)
        mx = await resolver.resolve("example.test", "MX")
        a = await resolver.resolve("mx.example.test", "A")
        return [str(r) for r in mx], [str(r) for r in a]

    assert asyncio.run(ask()) == (["10 mx.example.test."], ["192.0.2.25"])


def test_test_server_answers_over_tcp(dns_server: DNSServer) -> None:
    query = dns.message.make_query("mx.example.test", "A")
    response = dns.query.tcp(query, "127.0.0.1", port=dns_server.port, timeout=5)
    assert response.rcode() == dns.rcode.NOERROR
    assert [str(r) for r in response.answer[0]] == ["192.0.2.25"]
    assert dns_server.queries == [Query("mx.example.test", "A", "tcp")]


def test_test_server_truncates_big_udp_answers_and_the_resolver_retries_over_tcp() -> None:
    many = [f"192.0.2.{n}" for n in range(1, 61)]  # 60 A records: more than 512 octets
    with DNSServer({("big.example.test", "A"): many}) as server:

        async def ask() -> list[str]:
            answer = await resolver_for(server).resolve("big.example.test", "A")
            return [str(r) for r in answer]

        assert sorted(asyncio.run(ask())) == sorted(many)
        assert [q.transport for q in server.queries] == ["udp", "tcp"]
    assert server.errors == []


# -- end to end: the server's sessions --------------------------------------------------------


def test_loopback_client_is_not_looked_up_by_the_server(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    config = make_config(tmp_path / "data", resolver=(dns_server.nameserver,))
    with ThreadedServer(config) as server:
        assert server.server.context.resolver is not None
        with smtplib.SMTP(*server.address, timeout=10) as client:
            client.ehlo("client.test")
            refused = client.sendmail(
                "carol@remote.test", ["alice@example.test"], b"Subject: dns\r\n\r\nhello\r\n"
            )
            assert refused == {}
        server.wait_idle()
    (raw,) = read_maildir(config.mail_dir / "example.test" / "alice")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(message["Received"]).startswith("from client.test (unknown [127.0.0.1])")
    assert dns_server.query_count == 0


def test_system_is_an_explicit_choice() -> None:
    # Reads /etc/resolv.conf (no query is sent); only when asked for by name.
    resolver = make_resolver(("system",))
    assert resolver is not None
    assert check_resolvers(("system",), "resolver") == ("system",)
    with pytest.raises(ConfigError, match="stands alone"):
        check_resolvers(("system", "127.0.0.1:53"), "resolver")
