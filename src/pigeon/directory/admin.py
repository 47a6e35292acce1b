"""Changing the directory: what ``pigeon alias``, ``pigeon list``, ``pigeon user set`` and
the web API do, as a library, with the same checks for all of them.

Entries written in the configuration file are read-only here (the file is the place to change
them); new entries go to the directory store, which a running server reads at every lookup.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pigeon.config import Config, ListConfig, UserConfig
from pigeon.smtp import parse_mailbox

from ._directory import Alias, Directory, Forward, Mailbox, MailingList, Moved, Route
from ._names import canonical_address
from ._store import DirectoryStore, DirectoryStoreError

__all__ = ["DirectoryAdmin", "DirectoryAdminError", "Problem"]

POSTING = ("anyone", "members", "owner")
Source = Literal["config", "store", "none"]  # the configuration file, directory.db, nowhere


class Problem(enum.Enum):
    INVALID = "invalid"  # not an address, a bad value: the caller's mistake
    NOT_OURS = "not ours"  # a domain this server does not serve
    IN_CONFIG = "in config"  # defined in the configuration file: edit it there
    CONFLICT = "conflict"  # clashes with another entry
    UNKNOWN = "unknown"  # no such entry


class DirectoryAdminError(Exception):
    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class AliasEntry:
    address: str
    targets: tuple[str, ...]
    source: Source


@dataclass(frozen=True, slots=True)
class ListEntry:
    address: str
    spec: ListConfig
    source: Source


@dataclass(frozen=True, slots=True)
class UserEntry:
    address: str
    spec: UserConfig
    source: Source


class DirectoryAdmin:
    """``check_domains``: refuse addresses at domains the configuration does not serve (off
    when the configuration at hand is not the server's, e.g. only a data directory is
    known)."""

    def __init__(self, config: Config, store: DirectoryStore, *, check_domains: bool = True):
        self.config = config
        self.store = store
        self._check_domains = check_domains
        self._directory = Directory.from_config(config, store=store)

    # -- addresses ------------------------------------------------------------------------------
    @staticmethod
    def address(text: str) -> str:
        mailbox = parse_mailbox(text.strip().strip("<>"))
        if mailbox is None or not mailbox.domain:
            raise DirectoryAdminError(
                Problem.INVALID, f"{text!r} is not an address like user@example.test"
            )
        return str(mailbox)

    def ours(self, text: str) -> str:
        """An address at one of the server's own domains."""
        address = self.address(text)
        domain = address.rpartition("@")[2]
        if self._check_domains and not self._directory.serves(domain):
            served = ", ".join(self._directory.domains) or "none"
            raise DirectoryAdminError(
                Problem.NOT_OURS,
                f"{domain} is not a domain this server serves (it serves: {served})",
            )
        return address

    @staticmethod
    def _in(entries: Sequence[str], address: str) -> bool:
        wanted = canonical_address(address)
        return any(canonical_address(entry) == wanted for entry in entries)

    def _not_in_config(self, address: str, *tables: dict[str, Any]) -> None:
        for table in tables:
            if self._in(list(table), address):
                raise DirectoryAdminError(
                    Problem.IN_CONFIG,
                    f"{address} is defined in the configuration file; edit it there",
                )

    # -- aliases --------------------------------------------------------------------------------
    def aliases(self) -> list[AliasEntry]:
        found = [AliasEntry(a, t, "config") for a, t in self.config.aliases.items()]
        found += [AliasEntry(a, t, "store") for a, t in self.store.aliases().items()]
        return found

    def add_alias(
        self, address: str, targets: Sequence[str], *, replace: bool = False
    ) -> AliasEntry:
        """Add ``targets`` to the alias (made if new); with ``replace``, they become its only
        targets."""
        address = self.ours(address)
        self._not_in_config(address, self.config.aliases, self.config.lists)
        checked = [self.address(t) for t in targets]
        if not checked:
            raise DirectoryAdminError(Problem.INVALID, "an alias needs at least one target")
        if self.store.mailing_list(address) is not None:
            raise DirectoryAdminError(Problem.CONFLICT, f"{address} is a mailing list")
        if replace:
            self.store.remove_alias(address)
        self._store_call(lambda: self.store.add_alias(address, checked))
        return AliasEntry(canonical_address(address), self.store.alias(address), "store")

    def remove_alias(self, address: str, targets: Sequence[str] = ()) -> tuple[str, ...]:
        """Remove ``targets`` from the alias, or the whole alias; returns what is left."""
        address = self.address(address)
        self._not_in_config(address, self.config.aliases)
        removed = self.store.remove_alias(address, [self.address(t) for t in targets])
        if not removed:
            with_targets = " with those targets" if targets else ""
            raise DirectoryAdminError(Problem.UNKNOWN, f"no alias {address}{with_targets}")
        return self.store.alias(address)

    # -- lists ----------------------------------------------------------------------------------
    def lists(self) -> list[ListEntry]:
        found = [ListEntry(a, s, "config") for a, s in self.config.lists.items()]
        found += [ListEntry(a, s, "store") for a, s in self.store.lists().items()]
        return found

    def mailing_list(self, address: str) -> ListEntry:
        address = self.address(address)
        for name, spec in self.config.lists.items():
            if canonical_address(name) == canonical_address(address):
                return ListEntry(name, spec, "config")
        stored = self.store.mailing_list(address)
        if stored is None:
            raise DirectoryAdminError(Problem.UNKNOWN, f"no list {address}")
        return ListEntry(canonical_address(address), stored, "store")

    def create_list(
        self, address: str, *, owner: str, posting: str = "anyone", members: Sequence[str] = ()
    ) -> ListEntry:
        address = self.ours(address)
        self._not_in_config(address, self.config.lists, self.config.aliases)
        owner = self.address(owner)
        self._check_posting(posting)
        checked = [self.address(m) for m in members]
        self._store_call(lambda: self.store.create_list(address, owner=owner, posting=posting))
        if checked:
            self.store.change_list(address, add=checked)
        return self.mailing_list(address)

    def change_list(
        self,
        address: str,
        *,
        owner: str | None = None,
        posting: str | None = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
        members: Sequence[str] | None = None,
    ) -> ListEntry:
        """Change a list of the store; ``members`` replaces the whole membership."""
        address = self.address(address)
        self._not_in_config(address, self.config.lists)
        current = self.store.mailing_list(address)
        if current is None:
            raise DirectoryAdminError(Problem.UNKNOWN, f"no list {address}")
        if posting is not None:
            self._check_posting(posting)
        added = [self.address(m) for m in add]
        removed = [self.address(m) for m in remove]
        if members is not None:
            wanted = [self.address(m) for m in members]
            added += wanted
            removed += [m for m in current.members if not self._in(wanted, m)]
        self.store.change_list(
            address,
            owner=None if owner is None else self.address(owner),
            posting=posting,
            add=added,
            remove=removed,
        )
        return self.mailing_list(address)

    def delete_list(self, address: str) -> None:
        address = self.address(address)
        self._not_in_config(address, self.config.lists)
        if not self.store.delete_list(address):
            raise DirectoryAdminError(Problem.UNKNOWN, f"no list {address}")

    @staticmethod
    def _check_posting(posting: str) -> None:
        if posting not in POSTING:
            raise DirectoryAdminError(
                Problem.INVALID, f"posting: {posting!r} is not one of {', '.join(POSTING)}"
            )

    # -- users ----------------------------------------------------------------------------------
    def user(self, address: str) -> UserEntry:
        address = self.address(address)
        for name, spec in self.config.users.items():
            if canonical_address(name) == canonical_address(address):
                return UserEntry(name, spec, "config")
        found = self.store.user(address)
        if found is None:
            return UserEntry(canonical_address(address), UserConfig(), "none")
        return UserEntry(found[0], found[1], "store")

    def set_user(
        self,
        address: str,
        *,
        name: str | None = None,
        quota: int | None = None,
        forward: Sequence[str] | None = None,
        moved_to: str | None = None,
        add_addresses: Sequence[str] = (),
        remove_addresses: Sequence[str] = (),
    ) -> UserEntry:
        """Set a user's attributes; None leaves one as it is ("" for ``moved_to`` and an
        empty ``forward`` clear them)."""
        address = self.ours(address)
        self._not_in_config(address, self.config.users)
        if quota is not None and quota < 0:
            raise DirectoryAdminError(Problem.INVALID, "quota: octets, 0 or more")
        self._store_call(
            lambda: self.store.set_user(
                address,
                name=name,
                quota=quota,
                forward=None if forward is None else [self.address(a) for a in forward],
                moved_to=None if moved_to is None else (self.address(moved_to) if moved_to else ""),
                add_addresses=[self.ours(a) for a in add_addresses],
                remove_addresses=[self.address(a) for a in remove_addresses],
            )
        )
        return self.user(address)

    def route(self, address: str) -> Route | None:
        local, _, domain = self.ours(address).rpartition("@")
        return self._directory.route(local, domain)

    @staticmethod
    def _store_call(call: Any) -> None:
        try:
            call()
        except DirectoryStoreError as error:
            raise DirectoryAdminError(Problem.CONFLICT, str(error)) from None


def describe_route(route: Route | None) -> dict[str, Any]:
    """A route as plain data, for ``pigeon user show`` and the API."""
    if isinstance(route, Mailbox):
        return {
            "route": "mailbox",
            "mailbox": str(route.path),
            "name": route.name,
            "quota": route.quota,
        }
    if isinstance(route, Forward):
        return {
            "route": "forward",
            "forward": list(route.targets),
            "keeps_copy": route.mailbox is not None,
        }
    if isinstance(route, Moved):
        return {"route": "moved", "moved_to": route.new_address}
    if isinstance(route, Alias):
        return {"route": "alias", "targets": list(route.targets)}
    if isinstance(route, MailingList):
        return {"route": "list", "owner": route.owner, "members": len(route.members)}
    return {"route": "unknown"}
