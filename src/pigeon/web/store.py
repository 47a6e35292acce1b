"""The web's own state: login sessions and API tokens, in ``<data_dir>/web.db`` (SQLite).

Passwords stay in the user store (``pigeon.auth``, users.db); this file only says who logged
in and which tokens exist. A session id and a token are random 256-bit values shown to their
holder once; only their SHA-256 is kept, so a copy of this file opens no door. (A slow hash
like scrypt is for guessable passwords; a random 256-bit value cannot be guessed, and its
check runs on every request.)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pigeon.sqlite import use_wal

__all__ = ["LoginSession", "TokenEntry", "WebStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    digest  TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    csrf    TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    id       INTEGER PRIMARY KEY,
    digest   TEXT NOT NULL UNIQUE,
    address  TEXT NOT NULL,
    name     TEXT NOT NULL,
    created  REAL NOT NULL
);
"""

_TOKEN_PREFIX = "pgn_"  # noqa: S105 (a prefix, not a secret); recognisable in a leaked config or log, as GitHub's tokens are


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class LoginSession:
    address: str
    csrf: str
    expires: float


@dataclass(frozen=True, slots=True)
class TokenEntry:
    id: int
    address: str
    name: str
    created: float


class WebStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # secrets' digests
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        with self._lock:
            use_wal(self._db)
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- login sessions -----------------------------------------------------------------------
    def open_session(self, address: str, lifetime: float) -> tuple[str, LoginSession]:
        """A new login of ``address``: the cookie's value, and the session it stands for."""
        sid = secrets.token_urlsafe(32)
        session = LoginSession(address, secrets.token_urlsafe(32), time.time() + lifetime)
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            self._db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?)",
                (_digest(sid), session.address, session.csrf, session.expires),
            )
        return sid, session

    def session(self, sid: str) -> LoginSession | None:
        with self._lock:
            row = self._db.execute(
                "SELECT address, csrf, expires FROM sessions WHERE digest = ?", (_digest(sid),)
            ).fetchone()
        if row is None or row[2] < time.time():
            return None
        return LoginSession(*row)

    def close_session(self, sid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE digest = ?", (_digest(sid),))

    def close_sessions_of(self, address: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE address = ?", (address,))

    # -- API tokens ---------------------------------------------------------------------------
    def create_token(self, address: str, name: str) -> tuple[TokenEntry, str]:
        """A new token for ``address``: its entry, and the token itself (shown only now)."""
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        created = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO tokens (digest, address, name, created) VALUES (?, ?, ?, ?)",
                (_digest(token), address, name, created),
            )
        assert cursor.lastrowid is not None
        return TokenEntry(cursor.lastrowid, address, name, created), token

    def token_owner(self, token: str) -> str | None:
        """The address ``token`` belongs to, or None."""
        if not token.startswith(_TOKEN_PREFIX):
            return None
        digest = _digest(token)
        with self._lock:
            row = self._db.execute(
                "SELECT digest, address FROM tokens WHERE digest = ?", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[0], digest):
            return None
        return str(row[1])

    def tokens(self) -> list[TokenEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, address, name, created FROM tokens ORDER BY id"
            ).fetchall()
        return [TokenEntry(*row) for row in rows]

    def revoke_token(self, token_id: int) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM tokens WHERE id = ?", (token_id,))
        return cursor.rowcount > 0
