"""The table of counts per client that the worker processes of one server share."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from pigeon.config import Rate
from pigeon.policy import Admission, Anvil, AnvilError

COUNTED, REFUSED, UNCOUNTED = Admission.COUNTED, Admission.REFUSED, Admission.UNCOUNTED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def two_workers(path: Path, clock: Clock | None = None) -> tuple[Anvil, Anvil]:
    Anvil.create(path, columns=2)
    if clock is None:
        return Anvil.open(path, column=0), Anvil.open(path, column=1)
    return Anvil.open(path, column=0, clock=clock), Anvil.open(path, column=1, clock=clock)


def test_workers_count_connections_together(tmp_path: Path) -> None:
    one, two = two_workers(tmp_path / "anvil")
    assert one.connect("ip:192.0.2.1", 3) is COUNTED
    assert one.connect("ip:192.0.2.1", 3) is COUNTED
    assert two.connect("ip:192.0.2.1", 3) is COUNTED
    assert two.connect("ip:192.0.2.1", 3) is REFUSED  # the server has three: the limit
    assert one.connect("ip:192.0.2.1", 3) is REFUSED
    assert two.connect("ip:192.0.2.2", 3) is COUNTED  # another address counts apart
    assert one.connections("ip:192.0.2.1") == two.connections("ip:192.0.2.1") == 3
    one.disconnect("ip:192.0.2.1")
    assert two.connect("ip:192.0.2.1", 3) is COUNTED
    assert two.connect("ip:192.0.2.3", 0) is COUNTED  # no limit: counted all the same
    assert one.connections("ip:192.0.2.3") == 1


def test_a_worker_that_starts_again_forgets_only_its_own_connections(tmp_path: Path) -> None:
    one, two = two_workers(tmp_path / "anvil")
    for anvil in (one, one, two):
        assert anvil.connect("ip:192.0.2.1", 10) is COUNTED
    two.close()  # the worker died; its replacement opens the same column
    again = Anvil.open(tmp_path / "anvil", column=1)
    assert again.connections("ip:192.0.2.1") == 2
    again.disconnect("ip:192.0.2.1")  # not its own: a count never goes below zero
    assert one.connections("ip:192.0.2.1") == 2


def test_workers_take_from_the_same_buckets(tmp_path: Path) -> None:
    clock = Clock()
    one, two = two_workers(tmp_path / "anvil", clock)
    rate = Rate(3, 60.0)
    assert one.take([("ip:192.0.2.1", rate)]) is None
    assert two.take([("ip:192.0.2.1", rate)]) is None
    assert one.take([("ip:192.0.2.1", rate)]) is None
    assert two.take([("ip:192.0.2.1", rate)]) == 0
    assert one.tokens("ip:192.0.2.1", rate) == 0.0
    clock.now += 20  # a third of a minute: one message more, for whichever worker asks
    assert two.take([("ip:192.0.2.1", rate)]) is None
    assert one.take([("ip:192.0.2.1", rate)]) == 0


def test_a_refusal_takes_no_token() -> None:
    anvil = Anvil.private(slots=1, clock=Clock())  # both keys in one window of slots
    ip, user = ("ip:192.0.2.1", Rate(5, 60.0)), ("user:carol", Rate(1, 60.0))
    assert anvil.take([ip, user]) is None
    assert anvil.take([ip, user]) == 1  # the user's bucket is empty
    assert anvil.tokens("ip:192.0.2.1", Rate(5, 60.0)) == 4.0


def test_a_full_table_lets_clients_in_uncounted_and_frees_slots() -> None:
    clock = Clock()
    anvil = Anvil.private(slots=1, clock=clock)  # every key shares one window of slots
    busy = [f"ip:192.0.2.{n}" for n in range(16)]
    for key in busy:
        assert anvil.connect(key, 1) is COUNTED
    assert anvil.connect("ip:198.51.100.1", 1) is UNCOUNTED  # no room: let in, not counted
    assert anvil.connect("ip:198.51.100.1", 1) is UNCOUNTED
    assert anvil.connections("ip:198.51.100.1") == 0
    anvil.disconnect(busy[0])  # its slot is free again
    assert anvil.connect("ip:198.51.100.1", 1) is COUNTED
    assert anvil.connect("ip:198.51.100.1", 1) is REFUSED
    # A drained bucket keeps its slot until it has filled up again.
    for key in busy[1:]:
        anvil.disconnect(key)
    hourly = Rate(1, 3600.0)
    for key in busy[1:]:
        assert anvil.take([(key, hourly)]) is None
    assert anvil.take([("user:carol", hourly)]) is None  # no room: not limited
    assert anvil.take([("user:carol", hourly)]) is None
    clock.now += 3600
    assert anvil.take([("user:carol", hourly)]) is None  # a full bucket gave its slot up
    assert anvil.take([("user:carol", hourly)]) == 0


def test_what_is_not_a_table_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other").write_bytes(b"x" * 4096)
    with pytest.raises(AnvilError, match="not a table"):
        Anvil.open(tmp_path / "other", column=0)
    Anvil.create(tmp_path / "anvil", columns=2)
    with pytest.raises(AnvilError, match="no column 2"):
        Anvil.open(tmp_path / "anvil", column=2)
    with (tmp_path / "anvil").open("r+b") as table:
        table.truncate(1000)
    with pytest.raises(AnvilError, match="header does not match its size"):
        Anvil.open(tmp_path / "anvil", column=0)


def test_a_table_in_use_is_not_replaced(tmp_path: Path) -> None:
    """A second server started on the same data directory must not pull the table from
    under the workers of the first (its own start fails later, on the spool's lock)."""
    path = tmp_path / "anvil"
    Anvil.create(path, columns=2)
    worker = Anvil.open(path, column=1)
    assert worker.connect("ip:192.0.2.1", 5) is COUNTED
    with pytest.raises(AnvilError, match="in use: a server already runs"):
        Anvil.create(path, columns=3)
    other = Anvil.open(path, column=0)
    assert other.connections("ip:192.0.2.1") == 1  # the same table, still
    other.close()
    worker.close()  # the first server's workers are gone: the next one starts afresh
    Anvil.create(path, columns=3)
    assert Anvil.open(path, column=2).connections("ip:192.0.2.1") == 0


def _take_tokens(path: Path, column: int, tries: int, ready: Any, taken: Any) -> None:
    anvil = Anvil.open(path, column=column)
    ready.wait(60)  # all at once: their takes interleave
    rate = Rate(BUCKET, 3600.0)
    taken.put(sum(anvil.take([("ip:192.0.2.1", rate)]) is None for _ in range(tries)))
    anvil.close()


BUCKET = 6000


def test_processes_never_take_the_same_token_twice(tmp_path: Path) -> None:
    """Four processes at once, on one bucket, each trying for more than a quarter of it: the
    lock makes it exactly the bucket in all, however their reads and writes interleave."""
    path = tmp_path / "anvil"
    Anvil.create(path, columns=4)
    context = multiprocessing.get_context("spawn")
    ready, taken = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_take_tokens, args=(path, column, 2 * BUCKET // 4, ready, taken))
        for column in range(4)
    ]
    for process in processes:
        process.start()
    counts = [taken.get(timeout=90) for _ in processes]
    for process in processes:
        process.join(10)
    assert sum(counts) == BUCKET
