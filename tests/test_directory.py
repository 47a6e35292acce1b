"""pigeon.directory: which addresses are users here, and where their mail goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeon.config import DomainConfig
from pigeon.directory import Directory, Mailbox

ROOT = Path("/srv/mail")


@pytest.fixture
def directory() -> Directory:
    return Directory(
        {
            "example.test": DomainConfig(users=("alice", "Bob")),
            "catch.test": DomainConfig(users=("Listed",), catch_all=True),
        },
        mail_root=ROOT,
    )


def test_listed_user(directory: Directory) -> None:
    assert directory.find("alice", "example.test") == Mailbox(
        "alice", "example.test", ROOT / "example.test" / "alice"
    )


@pytest.mark.parametrize(
    ("local", "domain"),
    [("ALICE", "example.test"), ("Alice", "Example.Test"), ("alice", "EXAMPLE.TEST")],
)
def test_users_and_domains_are_case_insensitive(
    directory: Directory, local: str, domain: str
) -> None:
    assert directory.find(local, domain) == Mailbox(
        "alice", "example.test", ROOT / "example.test" / "alice"
    )


def test_a_user_keeps_the_case_of_the_configuration(directory: Directory) -> None:
    mailbox = directory.find("bob", "example.test")
    assert mailbox == Mailbox("Bob", "example.test", ROOT / "example.test" / "Bob")
    assert mailbox.address == "Bob@example.test"


def test_unknown_user(directory: Directory) -> None:
    assert directory.find("carol", "example.test") is None


@pytest.mark.parametrize("local", ["postmaster", "Postmaster", "POSTMASTER"])
def test_postmaster_always_exists(directory: Directory, local: str) -> None:
    """RFC 5321 section 4.5.1: every domain served takes mail for postmaster."""
    assert directory.find(local, "example.test") == Mailbox(
        "postmaster", "example.test", ROOT / "example.test" / "postmaster"
    )


def test_postmaster_of_a_domain_with_no_users() -> None:
    directory = Directory({"empty.test": DomainConfig()}, mail_root=ROOT)
    assert directory.find("postmaster", "empty.test") is not None
    assert directory.find("alice", "empty.test") is None


@pytest.mark.parametrize("local", ["alice", "postmaster", "anyone"])
def test_unknown_domain(directory: Directory, local: str) -> None:
    assert directory.find(local, "elsewhere.test") is None
    assert not directory.serves("elsewhere.test")


# -- catch-all --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local",
    ["anyone", "first.last", "user+tag", "a_b", "x=y", "a-b", "0", "_x", "a..b", "a" * 64],
)
def test_catch_all_takes_safe_names(directory: Directory, local: str) -> None:
    assert directory.find(local, "catch.test") == Mailbox(
        local, "catch.test", ROOT / "catch.test" / local
    )


def test_catch_all_lowercases_the_mailbox_name(directory: Directory) -> None:
    mailbox = directory.find("AnyOne", "Catch.Test")
    assert mailbox == Mailbox("anyone", "catch.test", ROOT / "catch.test" / "anyone")


def test_catch_all_keeps_listed_users_as_configured(directory: Directory) -> None:
    mailbox = directory.find("listed", "catch.test")
    assert mailbox is not None
    assert mailbox.user == "Listed"


@pytest.mark.parametrize(
    "local",
    [
        "../etc",
        "..",
        ".",
        ".hidden",
        "a/b",
        "/etc",
        "a\\b",
        "a b",
        "a\x00b",
        "a\nb",
        "-rf",
        "~root",
        "caf\u00e9",
        "",
        "a" * 65,
        "a@b",
        "a%b",
        "a!b",
        '"a"',
    ],
)
def test_catch_all_refuses_unsafe_names(directory: Directory, local: str) -> None:
    assert directory.find(local, "catch.test") is None


def test_catch_all_path_stays_inside_its_domain(directory: Directory) -> None:
    for local in ("anyone", "a.b", "x+y"):
        mailbox = directory.find(local, "catch.test")
        assert mailbox is not None
        assert mailbox.path.parent == ROOT / "catch.test"


def test_no_catch_all_means_only_listed_users(directory: Directory) -> None:
    assert directory.find("anyone", "example.test") is None


# -- the domains ------------------------------------------------------------------------------


def test_domains_are_served_case_insensitively() -> None:
    directory = Directory({"Example.TEST": DomainConfig(users=("alice",))}, mail_root=ROOT)
    assert directory.domains == ("example.test",)
    assert directory.serves("example.test")
    assert directory.serves("EXAMPLE.test")
    assert directory.find("alice", "example.test") is not None


def test_primary_domain_is_the_first_one(directory: Directory) -> None:
    assert directory.domains == ("example.test", "catch.test")
    assert directory.primary_domain == "example.test"


def test_describe_says_who_receives_mail_where(directory: Directory) -> None:
    assert directory.describe() == [
        f"example.test: alice, Bob, postmaster -> {ROOT}/example.test/<user>/ (Maildir)",
        f"catch.test: any local part -> {ROOT}/catch.test/<user>/ (Maildir)",
    ]


def test_mailbox_address() -> None:
    assert Mailbox("alice", "example.test", ROOT).address == "alice@example.test"
