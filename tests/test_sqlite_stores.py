"""Every worker opens the shared SQLite files at the same moment when `pigeon serve --workers
N` starts: none of them may fail with "database is locked" while another switches the new
file to WAL or creates its tables."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pigeon.auth import UserStore
from pigeon.directory import DirectoryStore
from pigeon.queue import QueueIndex
from pigeon.web.store import WebStore

OPENERS: dict[str, Callable[[Path], object]] = {
    "users.db": UserStore,
    "queue.db": QueueIndex,
    "directory.db": DirectoryStore,
    "web.db": WebStore,
}


@pytest.mark.parametrize("name", sorted(OPENERS))
def test_many_openers_of_a_new_file_at_once(tmp_path: Path, name: str) -> None:
    opener = OPENERS[name]
    for round_number in range(5):  # each round a new file, opened by 8 at once
        path = tmp_path / f"{round_number}-{name}"
        start = threading.Barrier(8)
        errors: list[BaseException] = []

        def open_it(
            path: Path = path,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait(timeout=10)
            try:
                store = opener(path)
                store.close()  # type: ignore[attr-defined]
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
