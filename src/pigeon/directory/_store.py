"""The directory's own store: users' attributes, aliases and mailing lists kept in SQLite
(``data_dir/directory.db``), edited with ``pigeon user set``, ``pigeon alias`` and
``pigeon list`` while the server runs.

The configuration file holds the same kinds of entries; the store adds to it. Every lookup
sees the store as it is now, so a change is seen by the next RCPT without a restart or a
signal: ``pigeon alias``, ``pigeon list``, ``pigeon user set`` and the web API tell the
running workers after each change, and changes made any other way are noticed within a
second (the database files' sizes and times tell). Passwords are not here:
they live in the user store of ``pigeon.auth``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from pigeon.config import ListConfig, UserConfig
from pigeon.sqlite import use_wal

from ._names import canonical_address

__all__ = ["DirectoryStore", "DirectoryStoreError", "Entry"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS users (
        address  TEXT PRIMARY KEY,
        name     TEXT NOT NULL DEFAULT '',
        quota    INTEGER NOT NULL DEFAULT 0,
        forward  TEXT NOT NULL DEFAULT '[]',
        moved_to TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS user_addresses (
        address TEXT PRIMARY KEY,
        user    TEXT NOT NULL
    ) WITHOUT ROWID""",
    # With a rowid: an alias's targets keep the order they were added in.
    """CREATE TABLE IF NOT EXISTS aliases (
        address TEXT NOT NULL,
        target  TEXT NOT NULL,
        UNIQUE (address, target)
    )""",
    """CREATE TABLE IF NOT EXISTS lists (
        address TEXT PRIMARY KEY,
        owner   TEXT NOT NULL,
        posting TEXT NOT NULL DEFAULT 'anyone'
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS list_members (
        list   TEXT NOT NULL REFERENCES lists (address) ON DELETE CASCADE,
        member TEXT NOT NULL,
        PRIMARY KEY (list, member)
    ) WITHOUT ROWID""",
)


_T = TypeVar("_T")
_CACHE_LIMIT = 100_000  # entries; a lookup storm of made-up addresses cannot grow it further
_CACHE_SECONDS = 2.0
_CHECK_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Entry:
    alias: tuple[str, ...]  # empty: not an alias
    mailing_list: ListConfig | None
    user: tuple[str, UserConfig] | None  # (primary address, attributes)


class DirectoryStoreError(Exception):
    """A change the store refuses; the message says why."""


def _key(address: str) -> str:
    """Store keys are addresses as the directory compares them (``canonical_address``)."""
    return canonical_address(address)


class DirectoryStore:
    """One connection, shared by the threads of one process behind a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], object] = {}
        self._cache_version: tuple[int, ...] = ()
        self._checked_at = -_CHECK_SECONDS
        self.changed = False  # this object has written to the store (tell the workers)
        self._wal = path.with_name(path.name + "-wal")
        with self._lock:
            use_wal(self._db)
            self._db.execute("PRAGMA foreign_keys = ON")
            for statement in _SCHEMA:
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def _version(self) -> tuple[int, ...]:
        """Changes whenever any process commits to the store: in WAL mode a commit appends
        to the -wal file and a checkpoint rewrites the main file, so their sizes and times
        tell (SQLite's own ``PRAGMA data_version`` takes file locks, several system calls).
        Even a stat() costs tens of microseconds on some machines, so the files are looked
        at once every ``_CHECK_SECONDS`` at most; the commands that change the store tell
        the running workers at once (``forget``), so the delay only concerns other writers.
        No answer is kept longer than ``_CACHE_SECONDS``."""
        stamp: list[int] = [int(time.monotonic() // _CACHE_SECONDS)]
        for path in (self.path, self._wal):
            try:
                info = os.stat(path)
            except FileNotFoundError:
                stamp += (0, 0)
            else:
                stamp += (info.st_mtime_ns, info.st_size)
        return tuple(stamp)

    def forget(self) -> None:
        """Another process changed the store: the next lookups read it again."""
        with self._lock:
            self._cache.clear()
            self._cache_version = ()
            self._checked_at = -_CHECK_SECONDS

    def _cached(self, key: tuple[str, str], load: Callable[[], _T]) -> _T:
        now = time.monotonic()
        if now - self._checked_at >= _CHECK_SECONDS:
            self._checked_at = now
            version = self._version()
            with self._lock:
                if version != self._cache_version:
                    self._cache.clear()
                    self._cache_version = version
        with self._lock:
            if key in self._cache:
                return cast(_T, self._cache[key])
        value = load()
        with self._lock:
            if len(self._cache) > _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = value
        return value

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.changed = True
            self._cache.clear()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, query: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    # -- lookups --------------------------------------------------------------------------------
    def entry(self, address: str) -> Entry:
        """Everything the store says of one address (alias targets, list, user), with one
        look at whether the store changed: what the directory asks at every RCPT."""
        key = _key(address)
        return self._cached(("entry", key), lambda: self._load_entry(address))

    def _load_entry(self, address: str) -> Entry:
        return Entry(self._load_alias(address), self._load_list(address), self._load_user(address))

    def user(self, address: str) -> tuple[str, UserConfig] | None:
        """The user whose primary or extra address this is: (primary address, attributes)."""
        return self._cached(("user", _key(address)), lambda: self._load_user(address))

    def _load_user(self, address: str) -> tuple[str, UserConfig] | None:
        key = _key(address)
        rows = self._rows(
            "SELECT u.address, u.name, u.quota, u.forward, u.moved_to FROM users u"
            " WHERE u.address = ?1 UNION ALL"
            " SELECT u.address, u.name, u.quota, u.forward, u.moved_to FROM user_addresses a"
            " JOIN users u ON u.address = a.user WHERE a.address = ?1",
            key,
        )
        if not rows:
            return None
        primary, name, quota, forward, moved_to = rows[0]
        extra = self._rows("SELECT address FROM user_addresses WHERE user = ?", primary)
        return str(primary), UserConfig(
            name=str(name),
            quota=int(str(quota)),
            addresses=tuple(str(r[0]) for r in extra),
            forward=tuple(json.loads(str(forward))),
            moved_to=str(moved_to),
        )

    def alias(self, address: str) -> tuple[str, ...]:
        return self._cached(("alias", _key(address)), lambda: self._load_alias(address))

    def _load_alias(self, address: str) -> tuple[str, ...]:
        rows = self._rows(
            "SELECT target FROM aliases WHERE address = ? ORDER BY rowid", _key(address)
        )
        return tuple(str(r[0]) for r in rows)

    def mailing_list(self, address: str) -> ListConfig | None:
        return self._cached(("list", _key(address)), lambda: self._load_list(address))

    def _load_list(self, address: str) -> ListConfig | None:
        key = _key(address)
        found = self._rows("SELECT owner, posting FROM lists WHERE address = ?", key)
        if not found:
            return None
        owner, posting = found[0]
        members = self._rows("SELECT member FROM list_members WHERE list = ? ORDER BY member", key)
        return ListConfig(
            members=tuple(str(r[0]) for r in members),
            owner=str(owner),
            posting=str(posting),  # type: ignore[arg-type]
        )

    def users(self) -> list[tuple[str, UserConfig]]:
        rows = self._rows("SELECT address FROM users ORDER BY address")
        return [found for r in rows if (found := self.user(str(r[0]))) is not None]

    def aliases(self) -> dict[str, tuple[str, ...]]:
        rows = self._rows("SELECT address, target FROM aliases ORDER BY address, rowid")
        found: dict[str, list[str]] = {}
        for address, target in rows:
            found.setdefault(str(address), []).append(str(target))
        return {address: tuple(targets) for address, targets in found.items()}

    def lists(self) -> dict[str, ListConfig]:
        rows = self._rows("SELECT address FROM lists ORDER BY address")
        return {
            str(r[0]): found for r in rows if (found := self.mailing_list(str(r[0]))) is not None
        }

    # -- changes --------------------------------------------------------------------------------
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
    ) -> None:
        """Create or change a user's attributes; what is None stays as it was."""
        key = _key(address)
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO users (address) VALUES (?)", (key,))
            if name is not None:
                db.execute("UPDATE users SET name = ? WHERE address = ?", (name, key))
            if quota is not None:
                db.execute("UPDATE users SET quota = ? WHERE address = ?", (quota, key))
            if forward is not None:
                db.execute(
                    "UPDATE users SET forward = ? WHERE address = ?",
                    (json.dumps(list(forward)), key),
                )
            if moved_to is not None:
                db.execute("UPDATE users SET moved_to = ? WHERE address = ?", (moved_to, key))
            row = db.execute(
                "SELECT forward, moved_to FROM users WHERE address = ?", (key,)
            ).fetchone()
            if json.loads(row[0]) and row[1]:
                raise DirectoryStoreError(f"{address}: forward and moved-to exclude each other")
            for extra in add_addresses:
                owner = db.execute(
                    "SELECT user FROM user_addresses WHERE address = ?", (_key(extra),)
                ).fetchone()
                if owner is not None and owner[0] != key:
                    raise DirectoryStoreError(f"{extra} already belongs to {owner[0]}")
                db.execute(
                    "INSERT OR IGNORE INTO user_addresses (address, user) VALUES (?, ?)",
                    (_key(extra), key),
                )
            for extra in remove_addresses:
                db.execute(
                    "DELETE FROM user_addresses WHERE address = ? AND user = ?", (_key(extra), key)
                )

    def delete_user(self, address: str) -> bool:
        key = _key(address)
        with self._write() as db:
            db.execute("DELETE FROM user_addresses WHERE user = ?", (key,))
            return db.execute("DELETE FROM users WHERE address = ?", (key,)).rowcount > 0

    def add_alias(self, address: str, targets: Sequence[str]) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM lists WHERE address = ?", (_key(address),)).fetchone():
                raise DirectoryStoreError(f"{address} is a mailing list")
            db.executemany(
                "INSERT OR IGNORE INTO aliases (address, target) VALUES (?, ?)",
                [(_key(address), target) for target in targets],
            )

    def remove_alias(self, address: str, targets: Sequence[str] = ()) -> int:
        """Remove ``targets`` from the alias, or the whole alias; returns targets removed."""
        with self._write() as db:
            if not targets:
                return db.execute(
                    "DELETE FROM aliases WHERE address = ?", (_key(address),)
                ).rowcount
            return sum(
                db.execute(
                    "DELETE FROM aliases WHERE address = ? AND target = ?", (_key(address), t)
                ).rowcount
                for t in targets
            )

    def create_list(self, address: str, *, owner: str, posting: str = "anyone") -> None:
        key = _key(address)
        with self._write() as db:
            if db.execute("SELECT 1 FROM aliases WHERE address = ?", (key,)).fetchone():
                raise DirectoryStoreError(f"{address} is an alias")
            if db.execute("SELECT 1 FROM lists WHERE address = ?", (key,)).fetchone():
                raise DirectoryStoreError(f"list {address} exists already")
            db.execute(
                "INSERT INTO lists (address, owner, posting) VALUES (?, ?, ?)",
                (key, owner, posting),
            )

    def change_list(
        self,
        address: str,
        *,
        owner: str | None = None,
        posting: str | None = None,
        add: Sequence[str] = (),
        remove: Sequence[str] = (),
    ) -> None:
        key = _key(address)
        with self._write() as db:
            if not db.execute("SELECT 1 FROM lists WHERE address = ?", (key,)).fetchone():
                raise DirectoryStoreError(f"no list {address}")
            if owner is not None:
                db.execute("UPDATE lists SET owner = ? WHERE address = ?", (owner, key))
            if posting is not None:
                db.execute("UPDATE lists SET posting = ? WHERE address = ?", (posting, key))
            db.executemany(
                "INSERT OR IGNORE INTO list_members (list, member) VALUES (?, ?)",
                [(key, member) for member in add],
            )
            db.executemany(
                "DELETE FROM list_members WHERE list = ? AND member = ?",
                [(key, member) for member in remove],
            )

    def delete_list(self, address: str) -> bool:
        with self._write() as db:
            return db.execute("DELETE FROM lists WHERE address = ?", (_key(address),)).rowcount > 0
