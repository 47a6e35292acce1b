"""The directory and the user store: a user of a served domain has a mailbox there."""

from __future__ import annotations

from pathlib import Path

from pigeon.config import DomainConfig
from pigeon.directory import Directory, Mailbox


def test_store_users_of_served_domains_have_mailboxes(tmp_path: Path) -> None:
    asked: list[str] = []
    store = {"dave@example.test", "erin@elsewhere.test", "x/y@example.test"}

    def user_exists(address: str) -> bool:
        asked.append(address)
        return address in store

    directory = Directory(
        {"example.test": DomainConfig(users=("alice",))},
        mail_root=tmp_path,
        user_exists=user_exists,
    )
    assert directory.find("Dave", "EXAMPLE.test") == Mailbox(
        "dave", "example.test", tmp_path / "example.test" / "dave"
    )
    assert directory.find("nobody", "example.test") is None
    assert directory.find("erin", "elsewhere.test") is None  # not a domain served here
    assert directory.find("x/y", "example.test") is None  # never a path outside the domain
    # Configured users and postmaster are answered without reading the store.
    asked.clear()
    assert directory.find("alice", "example.test") is not None
    assert directory.find("postmaster", "example.test") is not None
    assert asked == []


def test_catch_all_domains_take_any_safe_name_whatever_the_store_says(tmp_path: Path) -> None:
    directory = Directory(
        {"example.test": DomainConfig(catch_all=True)},
        mail_root=tmp_path,
        user_exists=lambda address: False,
    )
    assert directory.find("anyone", "example.test") is not None
