"""What every SQLite file of Pigeon's needs when it is opened: WAL mode, switched on safely
while other worker processes open the same file.

``PRAGMA journal_mode = WAL`` needs the database to itself for a moment, and SQLite answers
"database is locked" at once, without waiting out the busy timeout, when another connection
is in the middle of the same switch or of creating the schema. Every worker opens the shared
files at start, at the same moment, so the switch is retried until it succeeds or
``patience`` runs out.
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["use_wal"]


def use_wal(db: sqlite3.Connection, *, patience: float = 15.0) -> None:
    deadline = time.monotonic() + patience
    delay = 0.005
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
