"""The doorbell between ``pigeon queue`` and the workers: reports come back whole, or say
where they were cut."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pigeon.queue.control import ControlListener, ring


async def rung_with(tmp_path: Path, report: list[str]) -> list[str] | None:
    async def on_wake() -> list[str]:
        return report

    listener = await ControlListener.open(tmp_path, "w0", on_wake)
    try:
        return await asyncio.to_thread(ring, tmp_path, "w0", timeout=10)
    finally:
        await listener.close()


def test_a_report_comes_back_line_for_line(tmp_path: Path) -> None:
    report = [f"1K1DQN30JF{i:08d}: deleted" for i in range(5000)]
    assert asyncio.run(rung_with(tmp_path, report)) == report


def test_a_report_too_long_to_carry_says_it_was_cut(tmp_path: Path) -> None:
    report = [f"1K1DQN30JF{i:08d}: deleted" for i in range(100_000)]  # about 2.6 MB
    got = asyncio.run(rung_with(tmp_path, report))
    assert got is not None
    *lines, last = got
    assert last == "(the rest of the report is left out: over 1048576 bytes)"
    assert 30_000 < len(lines) < len(report)
    assert lines == report[: len(lines)]  # whole lines only, in order


def test_no_worker_is_none(tmp_path: Path) -> None:
    assert ring(tmp_path, "w9", timeout=2) is None
