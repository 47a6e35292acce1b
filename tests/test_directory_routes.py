"""Where the directory sends an address: aliases, lists, forwards, moved users, extra
addresses and sub-addresses, from the configuration and from the store; and the settings
that describe them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeon.config import ConfigError, DomainConfig, ListConfig, UserConfig, load_config
from pigeon.directory import (
    Alias,
    Directory,
    DirectoryStore,
    DirectoryStoreError,
    Forward,
    Mailbox,
    MailingList,
    Moved,
)
from pigeon.queue.routing import Refused, ToExpansion, ToMailbox
from pigeon.server.routes import directory_router


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "directory.db")


def make(tmp_path: Path, store: DirectoryStore | None = None, delimiter: str = "+") -> Directory:
    return Directory(
        {
            "example.test": DomainConfig(users=("alice", "bob")),
            "other.test": DomainConfig(catch_all=True),
        },
        mail_root=tmp_path / "mail",
        users={
            "alice@example.test": UserConfig(
                name="Alice Liddell", quota=1000, addresses=("al@example.test", "a@other.test")
            ),
            "bob@example.test": UserConfig(forward=("bob@elsewhere.test",)),
            "carol@example.test": UserConfig(moved_to="carol@new.test"),
        },
        aliases={"sales@example.test": ("alice@example.test", "x@elsewhere.test")},
        lists={"team@example.test": ListConfig(("alice@example.test",), "bob@example.test")},
        recipient_delimiter=delimiter,
        store=store,
    )


def test_routes_from_the_configuration(tmp_path: Path) -> None:
    directory = make(tmp_path)
    alice = directory.route("Alice", "EXAMPLE.test")
    assert alice == Mailbox(
        "alice", "example.test", tmp_path / "mail/example.test/alice", "Alice Liddell", 1000
    )
    assert directory.route("al", "example.test") == alice
    assert directory.route("a", "other.test") == alice  # an extra address in another domain
    assert directory.route("alice+news", "example.test") == alice
    assert directory.route("sales", "example.test") == Alias(
        "sales@example.test", ("alice@example.test", "x@elsewhere.test")
    )
    team = directory.route("team", "example.test")
    assert isinstance(team, MailingList)
    assert team.may_post("alice@example.test")  # posting: anyone
    assert directory.route("bob", "example.test") == Forward(
        "bob@example.test", ("bob@elsewhere.test",)
    )
    assert directory.route("carol", "example.test") == Moved("carol@example.test", "carol@new.test")
    assert directory.route("dave", "example.test") is None
    assert directory.route("anyone", "other.test") == Mailbox(
        "anyone", "other.test", tmp_path / "mail/other.test/anyone"
    )
    assert directory.route("postmaster", "example.test") is not None
    assert directory.route("alice", "elsewhere.test") is None


def test_sub_addressing_follows_its_delimiter(tmp_path: Path) -> None:
    assert make(tmp_path, delimiter="-").route("alice-news", "example.test") is not None
    assert make(tmp_path, delimiter="-").route("alice+news", "example.test") is None
    assert make(tmp_path, delimiter="").route("alice+news", "example.test") is None


def test_the_store_adds_to_the_configuration_at_once(tmp_path: Path, store: DirectoryStore) -> None:
    directory = make(tmp_path, store)
    assert directory.route("help", "example.test") is None
    store.add_alias("Help@Example.test", ["bob@example.test"])
    assert directory.route("help", "example.test") == Alias(
        "help@example.test", ("bob@example.test",)
    )
    store.create_list("club@example.test", owner="alice@example.test", posting="members")
    store.change_list("club@example.test", add=["bob@example.test"])
    club = directory.route("club", "example.test")
    assert isinstance(club, MailingList)
    assert club.may_post("BOB@example.test")
    assert club.may_post("alice@example.test")  # the owner may always
    assert not club.may_post("eve@elsewhere.test")
    store.set_user("eve@example.test", name="Eve", forward=["eve@example.test", "e@far.test"])
    assert directory.route("eve", "example.test") == Forward(
        "eve@example.test",
        ("e@far.test",),
        Mailbox("eve", "example.test", tmp_path / "mail/example.test/eve", "Eve"),
    )
    # By name in every domain (other.test takes any name), and by full name.
    assert [r.address for r in directory.candidates("Eve")] == [
        "eve@example.test",
        "eve@other.test",
    ]
    with pytest.raises(DirectoryStoreError, match="is an alias"):
        store.create_list("help@example.test", owner="alice@example.test")
    with pytest.raises(DirectoryStoreError, match="exclude each other"):
        store.set_user("eve@example.test", moved_to="eve@new.test")
    store.set_user("frank@example.test", add_addresses=["f@example.test"])
    with pytest.raises(DirectoryStoreError, match="already belongs to frank"):
        store.set_user("gina@example.test", add_addresses=["f@example.test"])
    assert store.remove_alias("help@example.test") == 1
    assert directory.route("help", "example.test") is None
    assert store.delete_list("club@example.test")
    assert directory.route("club", "example.test") is None


def test_the_queue_router_follows_the_directory(tmp_path: Path) -> None:
    route = directory_router(make(tmp_path))
    assert route("alice@example.test", False) == ToMailbox(
        tmp_path / "mail/example.test/alice", "alice@example.test", 1000
    )
    assert route("sales@example.test", False) == ToExpansion(
        "sales@example.test", ("alice@example.test", "x@elsewhere.test"), "alias"
    )
    assert route("team@example.test", False) == ToExpansion(
        "team@example.test", ("alice@example.test",), "list", sender="bob@example.test"
    )
    assert route("bob@example.test", False) == ToExpansion(
        "bob@example.test", ("bob@elsewhere.test",), "forward"
    )
    assert route("carol@example.test", False) == Refused(
        "5.1.6", "user has moved; please try <carol@new.test>"
    )
    assert isinstance(route("nobody@example.test", False), Refused)
    assert route("someone@elsewhere.test", False) is None


def test_directory_settings_are_checked(tmp_path: Path) -> None:
    def load(text: str) -> None:
        path = tmp_path / "pigeon.toml"
        path.write_text(text)
        load_config(path)

    with pytest.raises(ConfigError, match=r"lists\.t@x\.test\.owner: a list needs an owner"):
        load('[lists."t@x.test"]\nmembers = ["a@x.test"]\n')
    with pytest.raises(ConfigError, match="posting: expected anyone, members or owner"):
        load('[lists."t@x.test"]\nowner = "a@x.test"\nposting = "everyone"\n')
    with pytest.raises(ConfigError, match="forward and moved_to exclude each other"):
        load('[users."a@x.test"]\nforward = ["b@y.test"]\nmoved_to = "a@y.test"\n')
    with pytest.raises(ConfigError, match="is not an address"):
        load('[aliases]\n"sales" = ["a@x.test"]\n')
    with pytest.raises(ConfigError, match="at least one target"):
        load('[aliases]\n"sales@x.test" = []\n')
    with pytest.raises(ConfigError, match="recipient_delimiter"):
        load('[directory]\nrecipient_delimiter = "@"\n')
    with pytest.raises(ConfigError, match="quota_exceeded"):
        load('[directory]\nquota_exceeded = "drop"\n')
    with pytest.raises(ConfigError, match="quota: expected octets"):
        load('[users."a@x.test"]\nquota = -1\n')
