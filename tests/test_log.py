"""pigeon.log: logfmt lines, written once per turn of the event loop."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import threading
from collections.abc import Iterator

import pytest

from pigeon import log


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    counting = CountingStream()
    handler = log._BatchingHandler(counting)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("pigeon")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield counting
    logger.handlers[:], logger.level, logger.propagate = saved


def test_fields_are_logfmt_and_quoted_when_needed(stream: CountingStream) -> None:
    log.event("message", queue_id="Q1", to="<a@example.test>", reason="no such user", x=None)
    log.event("odd", text='say "hi"', pair="a=b", empty="", line="one\ntwo")
    log.event("controls", value="a\rb\tc")
    assert stream.getvalue().splitlines() == [
        'INFO event=message queue_id=Q1 to=<a@example.test> reason="no such user"',
        'INFO event=odd text="say \\"hi\\"" pair="a=b" empty="" line="one\\ntwo"',
        'INFO event=controls value="a\\rb\\tc"',
    ]


def test_lines_of_one_loop_turn_go_out_in_one_write(stream: CountingStream) -> None:
    async def turn() -> None:
        for n in range(5):
            log.event("line", n=n)
        assert stream.writes == 0  # not yet: at the end of this turn
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert stream.writes == 1
    assert stream.getvalue().splitlines() == [f"INFO event=line n={n}" for n in range(5)]


def test_lines_from_another_thread_are_written_at_once_in_order(stream: CountingStream) -> None:
    async def main() -> None:
        log.event("first")  # waits for the end of the turn
        worker = threading.Thread(target=log.event, args=("from_thread",))
        worker.start()
        worker.join()
        log.event("last")
        await asyncio.sleep(0)

    asyncio.run(main())
    assert stream.getvalue().splitlines() == [
        "INFO event=first",
        "INFO event=from_thread",
        "INFO event=last",
    ]


def test_a_new_loop_after_the_first_closed_still_gets_every_line(stream: CountingStream) -> None:
    async def one(name: str) -> None:
        log.event(name)
        await asyncio.sleep(0)

    asyncio.run(one("loop_one"))
    asyncio.run(one("loop_two"))
    log.event("no_loop")  # outside any loop: written at once
    assert stream.getvalue().splitlines() == [
        "INFO event=loop_one",
        "INFO event=loop_two",
        "INFO event=no_loop",
    ]


def test_loops_running_at_once_in_two_threads_each_get_their_own_lines(
    stream: CountingStream,
) -> None:
    both_running = threading.Barrier(2)

    def in_a_thread(name: str) -> None:
        async def main() -> None:
            await asyncio.to_thread(both_running.wait)
            for n in range(3):
                log.event(name, n=n)
                await asyncio.sleep(0)

        asyncio.run(main())

    threads = [threading.Thread(target=in_a_thread, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    lines = stream.getvalue().splitlines()
    for name in ("a", "b"):
        assert [line for line in lines if f"event={name} " in line] == [
            f"INFO event={name} n={n}" for n in range(3)
        ]


def test_the_servers_handler_gets_events_directly_in_the_same_form_and_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logger = logging.getLogger("pigeon")
    saved = logger.handlers[:], logger.level, logger.propagate
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr(log, "_server_handler", None)
    try:
        log.configure_logging()
        log.event("direct", n=1)  # the server's handler alone: no LogRecord
        logging.getLogger("pigeon.queue").warning("a record, from a module's own logger")
        log.event_at(logging.DEBUG, "below_the_level")
        logger.addFilter(lambda record: True)  # someone else listens now: records again
        log.event("through_a_record", n=2)
    finally:
        logger.filters.clear()
        logger.handlers[:], logger.level, logger.propagate = saved
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
    lines = err.getvalue().splitlines()
    assert len(lines) == 3
    assert re.fullmatch(stamp + " INFO event=direct n=1", lines[0])
    assert re.fullmatch(stamp + " WARNING a record, from a module's own logger", lines[1])
    assert re.fullmatch(stamp + " INFO event=through_a_record n=2", lines[2])
