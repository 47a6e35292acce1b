"""Delivery straight to the recipients' exchangers, with a real DNS server on loopback.

The DNS server (``tests.dns_server``) names exchangers at 127.0.0.2 and 127.0.0.3; Pigeon
listens on 127.0.0.3 only, so 127.0.0.2 on the same port refuses connections (a dead MX).
Nothing here leaves the machine.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import dns.asyncresolver
import pytest

from pigeon.client import SendResult, compose, resolve_mx, send, send_async
from pigeon.config import DomainConfig, ListenerConfig
from pigeon.dns import make_resolver
from tests.dns_server import DNSServer, Records
from tests.peers import port_is_closed
from tests.servers import ThreadedServer, make_config, read_maildir

SENDER = "carol@remote.test"
ALICE = "alice@dest.test"


@pytest.fixture
def mx_server(tmp_path: Path) -> Iterator[ThreadedServer]:
    """Pigeon on 127.0.0.3 (free port) taking mail for dest.test (alice) and other.test (bob).

    127.0.0.2 on the same port has nothing listening: that is the dead exchanger."""
    config = make_config(tmp_path / "data")
    config = replace(
        config,
        listen=(ListenerConfig(address="127.0.0.3:0"),),
        domains={
            "dest.test": DomainConfig(users=("alice",)),
            "other.test": DomainConfig(users=("bob",)),
        },
    )
    with ThreadedServer(config) as running:
        assert port_is_closed("127.0.0.2", running.port)
        yield running


def resolver_for(dns_server: DNSServer) -> dns.asyncresolver.Resolver:
    resolver = make_resolver((dns_server.nameserver,), timeout=5)
    assert resolver is not None
    return resolver


def mx_send(server: ThreadedServer, dns_server: DNSServer, recipients: list[str]) -> SendResult:
    message = compose(sender=SENDER, to=recipients, subject="direct", text="straight to MX\n")
    return send(
        message,
        mx=True,
        resolver=resolver_for(dns_server),
        port=server.port,
        timeout=5,
        local_hostname="client.remote.test",
    )


def address_queries(dns_server: DNSServer) -> list[str]:
    """The names whose addresses were asked for, in order, once each."""
    names: list[str] = []
    for query in dns_server.queries:
        if query.rdtype in ("A", "AAAA") and query.name not in names:
            names.append(query.name)
    return names


def delivered(server: ThreadedServer, domain: str, user: str) -> list[bytes]:
    server.wait_idle()
    return read_maildir(server.config.mail_dir / domain / user)


TWO_EXCHANGERS: Records = {
    ("dest.test", "MX"): ["20 mx2.dest.test.", "10 mx1.dest.test."],
    ("mx1.dest.test", "A"): "127.0.0.2",  # dead
    ("mx2.dest.test", "A"): "127.0.0.3",  # Pigeon
}


def test_dead_first_exchanger_falls_over_to_the_second(mx_server: ThreadedServer) -> None:
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        result = asyncio.run(
            send_async(
                compose(sender=SENDER, to=[ALICE], text="via mx2\n"),
                mx=True,
                resolver=resolver_for(dns_server),
                port=mx_server.port,
                timeout=5,
            )
        )
        queried = address_queries(dns_server)
    assert result.all_accepted
    (alice,) = result.recipients
    assert alice.server == f"mx2.dest.test[127.0.0.3]:{mx_server.port}"
    assert queried == ["mx1.dest.test", "mx2.dest.test"]  # lowest preference first
    assert len(delivered(mx_server, "dest.test", "alice")) == 1


def test_lowest_preference_is_used_when_it_answers(mx_server: ThreadedServer) -> None:
    records: Records = {
        ("dest.test", "MX"): ["20 backup.dest.test.", "10 primary.dest.test."],
        ("primary.dest.test", "A"): "127.0.0.3",
        ("backup.dest.test", "A"): "127.0.0.3",
    }
    with DNSServer(records) as dns_server:
        for _ in range(3):
            result = mx_send(mx_server, dns_server, [ALICE])
            assert result.recipients[0].server.startswith("primary.dest.test[")
        assert "backup.dest.test" not in address_queries(dns_server)


def test_equal_preferences_are_shuffled() -> None:
    records: Records = {
        ("dest.test", "MX"): ["10 a.dest.test.", "10 b.dest.test.", "5 first.dest.test.",
                              "10 c.dest.test.", "30 last.dest.test."],
    }  # fmt: skip

    async def orders(resolver: dns.asyncresolver.Resolver) -> set[tuple[str, ...]]:
        seen = set()
        for _ in range(30):
            exchangers = await resolve_mx("dest.test", resolver)
            hosts = [mx.host for mx in exchangers]
            assert hosts[0] == "first.dest.test"
            assert hosts[-1] == "last.dest.test"
            assert [mx.preference for mx in exchangers] == [5, 10, 10, 10, 30]
            seen.add(tuple(hosts[1:4]))
        return seen

    with DNSServer(records) as dns_server:
        seen = asyncio.run(orders(resolver_for(dns_server)))
    # 30 draws of one of 6 orders: all alike would be a (1/6)**29 chance.
    assert len(seen) > 1
    assert all(sorted(order) == ["a.dest.test", "b.dest.test", "c.dest.test"] for order in seen)


def test_no_mx_falls_back_to_the_domains_own_address(mx_server: ThreadedServer) -> None:
    with DNSServer({("dest.test", "A"): "127.0.0.3"}) as dns_server:
        result = mx_send(mx_server, dns_server, [ALICE])
        queries = [(q.name, q.rdtype) for q in dns_server.queries]
    assert result.all_accepted
    assert result.recipients[0].server == f"dest.test[127.0.0.3]:{mx_server.port}"
    assert queries[0] == ("dest.test", "MX")
    assert ("dest.test", "A") in queries
    assert len(delivered(mx_server, "dest.test", "alice")) == 1


def test_null_mx_is_refused_at_once_without_connecting(mx_server: ThreadedServer) -> None:
    records: Records = {("dest.test", "MX"): "0 .", ("dest.test", "A"): "127.0.0.3"}
    with DNSServer(records) as dns_server:
        result = mx_send(mx_server, dns_server, [ALICE, "bob@dest.test"])
        queries = [(q.name, q.rdtype) for q in dns_server.queries]
    for recipient in result.recipients:
        assert (recipient.code, recipient.status) == (550, "5.1.10")
        assert recipient.permanent
        assert "null MX" in recipient.text
        assert recipient.server == ""
    assert queries == [("dest.test", "MX")]  # no address looked up, so nothing connected
    assert delivered(mx_server, "dest.test", "alice") == []


def test_nonexistent_domain_is_a_permanent_failure(mx_server: ThreadedServer) -> None:
    with DNSServer(TWO_EXCHANGERS) as dns_server:
        result = mx_send(mx_server, dns_server, ["someone@nowhere.test"])
    (refused,) = result.recipients
    assert (refused.code, refused.status) == (550, "5.1.2")
    assert refused.permanent
    assert "nowhere.test" in refused.text


def test_one_domain_failing_does_not_hide_another_succeeding(mx_server: ThreadedServer) -> None:
    records: Records = {
        **TWO_EXCHANGERS,
        ("other.test", "MX"): "10 mx2.dest.test.",
        ("void.test", "MX"): "0 .",
    }
    recipients = ["x@nowhere.test", ALICE, "y@void.test", "bob@other.test", "nobody@dest.test"]
    with DNSServer(records) as dns_server:
        result = mx_send(mx_server, dns_server, recipients)
    assert [(r.recipient, r.code, r.status) for r in result.recipients] == [
        ("x@nowhere.test", 550, "5.1.2"),
        (ALICE, 250, "2.0.0"),
        ("y@void.test", 550, "5.1.10"),
        ("bob@other.test", 250, "2.0.0"),
        ("nobody@dest.test", 550, "5.1.1"),  # refused by the exchanger itself
    ]
    assert len(delivered(mx_server, "dest.test", "alice")) == 1
    assert len(delivered(mx_server, "other.test", "bob")) == 1


def test_every_exchanger_dead_is_a_temporary_failure(mx_server: ThreadedServer) -> None:
    records: Records = {
        ("dest.test", "MX"): ["10 mx1.dest.test.", "20 gone.dest.test."],
        ("mx1.dest.test", "A"): "127.0.0.2",
        # gone.dest.test has no address at all: skipped.
    }
    with DNSServer(records) as dns_server:
        result = mx_send(mx_server, dns_server, [ALICE])
    (failed,) = result.recipients
    assert (failed.code, failed.status) == (451, "4.4.1")
    assert failed.temporary
    assert "dest.test" in failed.text


def test_exchanger_without_an_address_is_skipped(mx_server: ThreadedServer) -> None:
    records: Records = {
        ("dest.test", "MX"): ["10 gone.dest.test.", "20 mx2.dest.test."],
        ("mx2.dest.test", "A"): "127.0.0.3",
    }
    with DNSServer(records) as dns_server:
        result = mx_send(mx_server, dns_server, [ALICE])
    assert result.all_accepted


def test_dns_failure_is_temporary(mx_server: ThreadedServer) -> None:
    with DNSServer(TWO_EXCHANGERS, rcode="SERVFAIL") as dns_server:
        result = mx_send(mx_server, dns_server, [ALICE])
    (failed,) = result.recipients
    assert (failed.code, failed.status) == (451, "4.4.3")
    assert failed.temporary


def test_address_literal_needs_no_dns(mx_server: ThreadedServer) -> None:
    with DNSServer({}) as dns_server:
        result = mx_send(mx_server, dns_server, ["postmaster@[127.0.0.3]"])
        assert dns_server.query_count == 0
    (recipient,) = result.recipients
    # Whatever Pigeon answers (it is not [127.0.0.3]'s final destination), it was Pigeon.
    assert recipient.server == f"127.0.0.3:{mx_server.port}"
    assert recipient.code in (250, 550)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_exchanger_reached_over_ipv6(tmp_path: Path) -> None:
    config = replace(
        make_config(tmp_path / "data"),
        listen=(ListenerConfig(address="[::1]:0"),),
        domains={"dest.test": DomainConfig(users=("alice",))},
    )
    records: Records = {
        ("dest.test", "MX"): "10 mx6.dest.test.",
        ("mx6.dest.test", "AAAA"): "::1",
    }
    with ThreadedServer(config) as server, DNSServer(records) as dns_server:
        result = mx_send(server, dns_server, [ALICE])
        assert result.all_accepted
        assert result.recipients[0].server == f"mx6.dest.test[::1]:{server.port}"
        assert len(delivered(server, "dest.test", "alice")) == 1
