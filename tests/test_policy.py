"""pigeon.policy: relay decisions (no open relay) and VRFY/EXPN answers, without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeon.config import DomainConfig
from pigeon.directory import Directory
from pigeon.policy import RelayPolicy, VerifyPolicy
from pigeon.smtp import Address, Reply, parse_mailbox

ROOT = Path("/srv/mail")
UNTRUSTED = "198.51.100.9"


def make_directory(**domains: DomainConfig) -> Directory:
    return Directory(
        domains or {"example.test": DomainConfig(users=("alice", "bob"))}, mail_root=ROOT
    )


def address(text: str) -> Address:
    parsed = parse_mailbox(text)
    assert parsed is not None, text
    return parsed


def code_and_status(reply: Reply | None) -> tuple[int, str | None] | None:
    return None if reply is None else (reply.code, reply.status)


@pytest.fixture
def relay() -> RelayPolicy:
    return RelayPolicy(make_directory())


# -- RelayPolicy.check_recipient ---------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    ["alice@example.test", "ALICE@Example.Test", "bob@example.test", "postmaster@example.test"],
)
def test_local_users_are_accepted_from_anyone(relay: RelayPolicy, recipient: str) -> None:
    assert relay.check_recipient(address(recipient), UNTRUSTED) is None


def test_unknown_local_user_is_550_5_1_1(relay: RelayPolicy) -> None:
    reply = relay.check_recipient(address("carol@example.test"), UNTRUSTED)
    assert code_and_status(reply) == (550, "5.1.1")
    assert reply is not None
    assert "<carol@example.test>" in reply.text


@pytest.mark.parametrize(
    "recipient",
    [
        "user%elsewhere.test@example.test",  # percent hack
        "elsewhere.test!user@example.test",  # UUCP bang path
        '"user@elsewhere.test"@example.test',  # quoted @
        "alice%example.test@example.test",  # even when it would route back here
    ],
)
@pytest.mark.parametrize("client", [UNTRUSTED, "192.0.2.7"])
def test_routing_in_a_local_part_is_refused_even_from_trusted_clients(
    recipient: str, client: str
) -> None:
    relay = RelayPolicy(make_directory(), trusted_networks=["192.0.2.0/24"])
    reply = relay.check_recipient(address(recipient), client)
    assert code_and_status(reply) == (550, "5.7.1")


def test_foreign_domain_from_untrusted_client_is_relay_denied(relay: RelayPolicy) -> None:
    reply = relay.check_recipient(address("victim@elsewhere.test"), UNTRUSTED)
    assert code_and_status(reply) == (550, "5.7.1")
    assert reply is not None
    assert reply.text == "<victim@elsewhere.test>: Relay access denied"


@pytest.mark.parametrize("client", ["127.0.0.1", "::1", "127.0.0.2", "", "not-an-address"])
def test_no_one_is_trusted_by_default_not_even_loopback(relay: RelayPolicy, client: str) -> None:
    assert not relay.is_trusted(client)
    reply = relay.check_recipient(address("victim@elsewhere.test"), client)
    assert code_and_status(reply) == (550, "5.7.1")


@pytest.mark.parametrize(
    ("networks", "client"),
    [
        (["192.0.2.0/24"], "192.0.2.7"),
        (["192.0.2.7/32"], "192.0.2.7"),
        (["192.0.2.7"], "192.0.2.7"),
        (["192.0.2.1/24"], "192.0.2.200"),  # host bits set: taken as the network
        (["2001:db8::/32"], "2001:db8:1::25"),
        (["192.0.2.0/24"], "::ffff:192.0.2.7"),  # IPv4-mapped IPv6 is the IPv4 client
        (["198.51.100.0/24", "2001:db8::/32"], "2001:db8::1"),
        (["127.0.0.0/8"], "127.0.0.1"),
    ],
)
def test_trusted_networks_may_relay(networks: list[str], client: str) -> None:
    relay = RelayPolicy(make_directory(), trusted_networks=networks)
    assert relay.is_trusted(client)
    assert relay.check_recipient(address("someone@elsewhere.test"), client) is None


@pytest.mark.parametrize(
    ("networks", "client"),
    [
        (["192.0.2.0/24"], "192.0.3.1"),
        (["192.0.2.0/24"], "2001:db8::1"),
        (["2001:db8::/32"], "2001:db9::1"),
        (["2001:db8::/32"], "192.0.2.7"),
        (["192.0.2.0/24"], ""),
        (["192.0.2.0/24"], "192.0.2"),
        (["192.0.2.0/24"], "::ffff:192.0.3.1"),
    ],
)
def test_clients_outside_the_trusted_networks_may_not_relay(
    networks: list[str], client: str
) -> None:
    relay = RelayPolicy(make_directory(), trusted_networks=networks)
    assert not relay.is_trusted(client)
    reply = relay.check_recipient(address("someone@elsewhere.test"), client)
    assert code_and_status(reply) == (550, "5.7.1")


def test_trusted_clients_still_get_550_for_unknown_local_users() -> None:
    relay = RelayPolicy(make_directory(), trusted_networks=["192.0.2.0/24"])
    reply = relay.check_recipient(address("carol@example.test"), "192.0.2.7")
    assert code_and_status(reply) == (550, "5.1.1")


def test_address_literal_is_not_a_local_domain(relay: RelayPolicy) -> None:
    reply = relay.check_recipient(address("alice@[192.0.2.1]"), UNTRUSTED)
    assert code_and_status(reply) == (550, "5.7.1")


def test_catch_all_domain_accepts_any_safe_name_and_refuses_the_rest() -> None:
    relay = RelayPolicy(make_directory(**{"example.test": DomainConfig(catch_all=True)}))
    assert relay.check_recipient(address("anyone@example.test"), UNTRUSTED) is None
    reply = relay.check_recipient(address('".hidden"@example.test'), UNTRUSTED)
    assert code_and_status(reply) == (550, "5.1.1")


# -- RelayPolicy.canonical_recipient -----------------------------------------------------------


@pytest.mark.parametrize("local", ["postmaster", "Postmaster", "POSTMASTER"])
def test_bare_postmaster_goes_to_the_primary_domain(local: str) -> None:
    directory = make_directory(
        **{"first.test": DomainConfig(), "second.test": DomainConfig(users=("alice",))}
    )
    relay = RelayPolicy(directory)
    canonical = relay.canonical_recipient(Address(local, ""))
    assert canonical == Address("postmaster", "first.test")
    assert relay.check_recipient(canonical, UNTRUSTED) is None


@pytest.mark.parametrize(
    "recipient",
    [Address("postmaster", "example.test"), Address("alice", "example.test"), Address("x", "")],
)
def test_other_recipients_are_left_alone(relay: RelayPolicy, recipient: Address) -> None:
    assert relay.canonical_recipient(recipient) is recipient


def test_bare_postmaster_with_no_domains_gets_a_reply() -> None:
    relay = RelayPolicy(Directory({}, mail_root=ROOT))
    recipient = relay.canonical_recipient(Address("postmaster", ""))
    reply = relay.check_recipient(recipient, UNTRUSTED)
    assert reply is not None
    assert reply.code == 550


# -- VerifyPolicy -------------------------------------------------------------------------------


def verify(argument: str, *, vrfy: str = "on", directory: Directory | None = None) -> Reply:
    policy = VerifyPolicy(directory or make_directory(), vrfy=vrfy, expn="off")
    return policy.verify(argument)


@pytest.mark.parametrize("argument", ["alice", "carol", "alice@example.test", "x@elsewhere.test"])
def test_vrfy_hidden_answers_252_without_looking(argument: str) -> None:
    reply = verify(argument, vrfy="hidden")
    assert (reply.code, reply.status) == (252, "2.5.0")


@pytest.mark.parametrize("argument", ["alice", "carol"])
def test_vrfy_off_answers_502(argument: str) -> None:
    reply = verify(argument, vrfy="off")
    assert (reply.code, reply.status) == (502, "5.5.1")


@pytest.mark.parametrize(
    "argument",
    ["alice", "ALICE", "alice@example.test", "<alice@example.test>", "Alice@Example.Test"],
)
def test_vrfy_on_names_the_mailbox(argument: str) -> None:
    reply = verify(argument)
    assert (reply.code, reply.status) == (250, "2.1.5")
    assert reply.lines == ("<alice@example.test>",)


def test_vrfy_on_postmaster() -> None:
    assert verify("postmaster").lines == ("<postmaster@example.test>",)


@pytest.mark.parametrize("argument", ["carol", "carol@example.test", "alice@elsewhere.test"])
def test_vrfy_on_unknown_is_550(argument: str) -> None:
    reply = verify(argument)
    assert (reply.code, reply.status) == (550, "5.1.1")


def test_vrfy_on_ambiguous_name_is_553_listing_each_mailbox() -> None:
    directory = make_directory(
        **{
            "example.test": DomainConfig(users=("alice",)),
            "other.test": DomainConfig(users=("alice",)),
        }
    )
    reply = verify("alice", directory=directory)
    assert (reply.code, reply.status) == (553, "5.1.4")
    assert reply.lines[1:] == ("<alice@example.test>", "<alice@other.test>")
    # A full address is never ambiguous.
    assert verify("alice@other.test", directory=directory).lines == ("<alice@other.test>",)


@pytest.mark.parametrize("argument", ["not an@@address", "alice@", "@example.test", "<a@b@c>"])
def test_vrfy_on_bad_address_is_501(argument: str) -> None:
    reply = verify(argument)
    assert reply.code == 501


def test_expn_off_is_502() -> None:
    policy = VerifyPolicy(make_directory(), vrfy="on", expn="off")
    reply = policy.expand("staff")
    assert (reply.code, reply.status) == (502, "5.5.1")


@pytest.mark.parametrize("argument", ["staff", "alice"])
def test_expn_on_is_550_since_there_are_no_lists(argument: str) -> None:
    policy = VerifyPolicy(make_directory(), vrfy="hidden", expn="on")
    reply = policy.expand(argument)
    assert (reply.code, reply.status) == (550, "5.1.1")
