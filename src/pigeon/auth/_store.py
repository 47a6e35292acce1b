"""The users who may authenticate: ``<data_dir>/users.db``, SQLite in WAL mode.

Each user is a mail address (lower case), with two forms of the password, neither of which
gives the password back: an scrypt hash for PLAIN and LOGIN, and SCRAM-SHA-256's salted keys.
The server reads the table on every authentication, so ``pigeon user add`` and friends take
effect at once, with no restart; WAL lets it read while the command writes.

One connection serves every thread of a process, behind a lock: lookups are single-row
reads by primary key, far cheaper than a connection each.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pigeon.smtp._abnf import DOMAIN_RE
from pigeon.sqlite import use_wal

from ._passwords import hash_password, verify_password
from ._scram import ScramCredentials

__all__ = ["UserEntry", "UserExists", "UserStore", "UserStoreError", "normalize_address"]

# A user's local part also names their Maildir, so it must be safe as a directory name (the
# rule the directory applies to catch-all local parts).
_LOCAL_PART = re.compile(r"[a-z0-9_][a-z0-9._+=-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY NOT NULL,
    password TEXT NOT NULL,
    scram_salt BLOB NOT NULL,
    scram_iterations INTEGER NOT NULL,
    scram_stored_key BLOB NOT NULL,
    scram_server_key BLOB NOT NULL,
    created INTEGER NOT NULL,
    changed INTEGER NOT NULL
) WITHOUT ROWID
"""


@functools.cache
def _dummy_hash() -> str:
    """Checked against for a user who does not exist, so that costs as much as a check for
    one who does, and the time taken does not tell which addresses are users."""
    return hash_password("pigeon: no such user")


class UserStoreError(Exception):
    """The address is not acceptable, or the user does not exist; the message says which."""


class UserExists(UserStoreError):
    pass


def normalize_address(text: str) -> str:
    """``Alice@Example.TEST`` as ``alice@example.test``; raises ``UserStoreError``."""
    address = text.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or not DOMAIN_RE.fullmatch(domain):
        raise UserStoreError(
            f"{text!r} is not a user address like alice@example.test (local part: letters,"
            " digits and . _ + = -)"
        )
    return address


@dataclass(frozen=True, slots=True)
class UserEntry:
    address: str
    created: int  # Unix time
    changed: int  # when the password was last set


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            # Hashes are secrets too: nobody else may read them. (SQLite gives the -wal and
            # -shm files the mode of the database.)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        with self._lock:
            use_wal(self._db)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- reading ------------------------------------------------------------------------------
    def exists(self, address: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM users WHERE address = ?", (address.lower(),)
            ).fetchone()
        return row is not None

    def list(self) -> list[UserEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT address, created, changed FROM users ORDER BY address"
            ).fetchall()
        return [UserEntry(*row) for row in rows]

    def scram_credentials(self, address: str) -> ScramCredentials | None:
        with self._lock:
            row = self._db.execute(
                "SELECT scram_salt, scram_iterations, scram_stored_key, scram_server_key"
                " FROM users WHERE address = ?",
                (address.lower(),),
            ).fetchone()
        return None if row is None else ScramCredentials(*row)

    def check_password(self, address: str, password: str) -> str | None:
        """The user's address if ``password`` is theirs, else None. Slow on purpose (scrypt):
        call it off the event loop."""
        with self._lock:
            row = self._db.execute(
                "SELECT address, password FROM users WHERE address = ?", (address.lower(),)
            ).fetchone()
        if row is None:
            verify_password(password, _dummy_hash())
            return None
        user, stored = row
        return str(user) if verify_password(password, stored) else None

    # -- writing ------------------------------------------------------------------------------
    def add(self, address: str, password: str) -> str:
        """Add a user; raises ``UserExists`` or ``UserStoreError``. Returns the address."""
        address = normalize_address(address)
        secrets = self._secrets(password)
        now = int(time.time())
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (address, *secrets, now, now),
                )
        except sqlite3.IntegrityError:
            raise UserExists(f"{address} exists already") from None
        return address

    def set_password(self, address: str, password: str) -> str:
        address = normalize_address(address)
        secrets = self._secrets(password)
        with self._lock:
            cursor = self._db.execute(
                "UPDATE users SET password = ?, scram_salt = ?, scram_iterations = ?,"
                " scram_stored_key = ?, scram_server_key = ?, changed = ? WHERE address = ?",
                (*secrets, int(time.time()), address),
            )
        if cursor.rowcount == 0:
            raise UserStoreError(f"no such user: {address}")
        return address

    def delete(self, address: str) -> str:
        address = normalize_address(address)
        with self._lock:
            cursor = self._db.execute("DELETE FROM users WHERE address = ?", (address,))
        if cursor.rowcount == 0:
            raise UserStoreError(f"no such user: {address}")
        return address

    @staticmethod
    def _secrets(password: str) -> tuple[str, bytes, int, bytes, bytes]:
        if not password:
            raise UserStoreError("the password is empty")
        try:
            hashed = hash_password(password)
        except ValueError as error:  # SASLprep refused a character
            raise UserStoreError(f"unusable password: {error}") from None
        scram = ScramCredentials.from_password(password)
        return hashed, scram.salt, scram.iterations, scram.stored_key, scram.server_key
