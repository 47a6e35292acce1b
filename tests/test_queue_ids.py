"""Queue ids: unique within a process, across processes, sorted by time."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest

from pigeon.queue import ids
from pigeon.queue.ids import QUEUE_ID_LENGTH, new_queue_id, queue_id_time

QUEUE_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{18}")

_CHILD = """
from pigeon.queue.ids import new_queue_id
print("\\n".join(new_queue_id() for _ in range(50_000)))
"""


def test_shape() -> None:
    qid = new_queue_id()
    assert QUEUE_ID_LENGTH == 18
    assert QUEUE_ID.fullmatch(qid), qid


def test_unique_and_ordered_over_100k() -> None:
    generated = [new_queue_id() for _ in range(100_000)]
    assert len(set(generated)) == len(generated)
    # Strictly increasing within a process, so sorting by id is sorting by creation.
    assert generated == sorted(generated)
    assert all(QUEUE_ID.fullmatch(q) for q in generated[:1000])


def test_unique_across_threads() -> None:
    results: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        out.extend(new_queue_id() for _ in range(10_000))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [q for r in results for q in r]
    assert len(set(everything)) == len(everything)


def test_unique_across_processes() -> None:
    # Two processes running at the same time, each as fast as it can, plus this one.
    children = [
        subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    here = [new_queue_id() for _ in range(50_000)]
    outputs = [c.communicate(timeout=60)[0].split() for c in children]
    assert all(c.returncode == 0 for c in children)
    everything = here + outputs[0] + outputs[1]
    assert len(everything) == 150_000
    assert len(set(everything)) == len(everything)


def test_time_is_recoverable() -> None:
    before = time.time()
    qid = new_queue_id()
    after = time.time()
    # The monotonic bump can put an id a few microseconds ahead of the clock.
    assert before - 0.001 <= queue_id_time(qid) <= after + 0.001


def test_clock_standing_still_or_going_back_still_gives_new_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # monkeypatch restores the module's memory of the last time, so later tests see the
    # real clock again.
    monkeypatch.setattr(ids, "_last_us", 0)
    monkeypatch.setattr(ids, "_clock", lambda: 2_000_000_000_000_000_000)
    first = [new_queue_id() for _ in range(100)]  # the clock stands still
    monkeypatch.setattr(ids, "_clock", lambda: 1_900_000_000_000_000_000)
    second = [new_queue_id() for _ in range(100)]  # and then steps back
    everything = first + second
    assert len(set(everything)) == 200
    assert everything == sorted(everything)


def test_queue_id_time_rejects_garbage() -> None:
    for bad in ("", "short", "I" * 18, "0" * 19):
        with pytest.raises(ValueError, match="not a queue id"):
            queue_id_time(bad)
