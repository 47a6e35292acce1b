"""The scheduler: batches of deliveries share one sync of new/, and a failed sync defers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pigeon.delivery import DeliveryResult, MaildirAgent, MaildirItem, Outcome
from pigeon.queue import Envelope, QueueIndex, RecipientState, Scheduler, Spool
from pigeon.queue.index import IndexChanges, Request
from pigeon.queue.routing import Held
from pigeon.queue.scheduler import _HELD_FLUSH_INTERVAL


class CountingAgent(MaildirAgent):
    """The real Maildir agent, counting syncs of new/ and failing them on request."""

    def __init__(self, *, fail_sync: bool = False) -> None:
        super().__init__(hostname="mx.example.test")
        self.syncs = 0
        self.deliveries = 0
        self.fail_sync = fail_sync

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]:
        self.deliveries += len(items)
        return super().deliver_many(items)

    def sync_new_dirs(self, maildirs: Iterable[Path]) -> dict[Path, DeliveryResult | None]:
        self.syncs += 1
        if self.fail_sync:
            failure = DeliveryResult("", Outcome.DEFERRED, "4.3.0", "sync new/ failed (test)")
            return dict.fromkeys(maildirs, failure)
        return super().sync_new_dirs(maildirs)


async def deliver_all(tmp_path: Path, agent: CountingAgent, count: int) -> Spool:
    spool = Spool(tmp_path / "spool")
    await spool.open()
    maildir = tmp_path / "mail" / "alice"
    scheduler = Scheduler(
        spool,
        index=QueueIndex(tmp_path / "queue.db"),
        local_agent=agent,
        find_maildir=lambda r: maildir,
        concurrency=1,
        retry_base=3600,
    )
    for n in range(count):
        writer = spool.new_message()
        writer.write(f"Subject: {n}\r\n\r\nx\r\n".encode())
        envelope = Envelope("a@remote.test", ("alice@example.test",), received_at=time.time())
        scheduler.submit(await spool.commit(writer, envelope))
    scheduler.start()  # everything is queued before the first batch is taken
    await asyncio.wait_for(scheduler.wait_idle(), 30)
    await scheduler.stop()
    return spool


def test_a_batch_shares_one_sync(tmp_path: Path) -> None:
    agent = CountingAgent()

    async def run() -> int:
        spool = await deliver_all(tmp_path, agent, 40)
        await spool.close()
        again = Spool(tmp_path / "spool")
        await again.open()
        left = len(await again.recover())
        await again.close()
        return left

    assert asyncio.run(run()) == 0  # all marked done
    assert agent.deliveries == 40
    assert agent.syncs == 1
    assert len(list((tmp_path / "mail" / "alice" / "new").iterdir())) == 40


def test_a_failed_sync_defers_and_keeps_the_messages(tmp_path: Path) -> None:
    agent = CountingAgent(fail_sync=True)

    async def run() -> None:
        spool = await deliver_all(tmp_path, agent, 3)
        await spool.close()

    asyncio.run(run())
    assert agent.deliveries == 3

    async def recover() -> int:
        again = Spool(tmp_path / "spool")
        await again.open()
        left = len(await again.recover())
        await again.close()
        return left

    # Not marked done: the next start delivers them again (idempotently).
    assert asyncio.run(recover()) == 3


def holding_scheduler(spool: Spool, index: QueueIndex) -> Scheduler:
    """A scheduler that holds every recipient for ATRN: all it does is keep the index."""
    return Scheduler(
        spool,
        index=index,
        local_agent=CountingAgent(),
        router=lambda recipient, direct: Held("held for ATRN"),
        retry_base=3600,
    )


class CountingIndex(QueueIndex):
    """The real index, counting its write transactions."""

    transactions = 0

    def apply(self, changes: IndexChanges, *, now: float | None = None) -> None:
        CountingIndex.transactions += 1
        super().apply(changes, now=now)


def test_held_mail_reaches_the_index_in_few_transactions(tmp_path: Path) -> None:
    """A burst of held (ATRN) mail is written to the index a batch at a time, and every
    message is there, held, once the burst is over and the scheduler has stopped."""
    count = 60

    async def run() -> float:
        spool = Spool(tmp_path / "spool")
        await spool.open()
        index = CountingIndex(tmp_path / "queue.db")
        scheduler = holding_scheduler(spool, index)
        scheduler.start()
        commits = []
        for n in range(count):
            writer = spool.new_message()
            writer.write(f"Subject: {n}\r\n\r\nx\r\n".encode())
            envelope = Envelope("a@remote.test", ("bob@held.test",), received_at=time.time())
            commits.append(spool.commit(writer, envelope))
        started = time.monotonic()
        for stored in await asyncio.gather(*commits):
            scheduler.submit(stored)
            await asyncio.sleep(0.002)  # messages arriving one by one, as from sessions
        await scheduler.stop()
        await spool.close()
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    with QueueIndex(tmp_path / "queue.db", readonly=True) as index:
        messages = index.messages()
        assert len(messages) == count
        recipients = [r for m in messages for r in m.recipients]
        # Each says why it is held; holding is no delivery attempt, so there is no history.
        assert {(r.state, r.attempts, r.status, r.last_reply) for r in recipients} == {
            (RecipientState.HELD, 0, "4.3.2", "held for ATRN")
        }
        assert not any(index.attempts(m.queue_id) for m in messages)
    # One at once, then at most one per interval (the last when the scheduler stops).
    assert 1 <= CountingIndex.transactions <= elapsed / _HELD_FLUSH_INTERVAL + 2
    assert CountingIndex.transactions < count // 4


class BusyIndex(QueueIndex):
    """The real index, whose reading of requests keeps the index thread busy until told."""

    def __init__(self, path: Path, release: threading.Event) -> None:
        super().__init__(path)
        self.release = release
        self.reading = threading.Event()

    def take_requests(self, owner: str) -> list[Request]:
        self.reading.set()
        self.release.wait(10)
        return super().take_requests(owner)


def test_stop_keeps_a_flush_that_waits_for_the_index_thread(tmp_path: Path) -> None:
    """stop() cancels the task of a scheduled flush. If that flush's write is still queued
    behind other work of the index thread, the write must still happen: its changes have
    been taken, and would otherwise be lost (the held message missing from the index)."""
    release = threading.Event()

    async def run() -> None:
        spool = Spool(tmp_path / "spool")
        await spool.open()
        index = BusyIndex(tmp_path / "queue.db", release)
        scheduler = holding_scheduler(spool, index)
        scheduler.start()
        reading = asyncio.create_task(scheduler.apply_requests())
        assert await asyncio.to_thread(index.reading.wait, 10)  # the index thread is busy
        writer = spool.new_message()
        writer.write(b"Subject: held\r\n\r\nx\r\n")
        stored = await spool.commit(writer, Envelope("a@remote.test", ("bob@held.test",)))
        scheduler.submit(stored)  # its flush starts at once, and waits for the thread
        for _ in range(10):
            await asyncio.sleep(0)
        # The thread is released while stop() waits for it, after the flush was cancelled.
        threading.Timer(0.2, release.set).start()
        await scheduler.stop()
        # The request reader, resumed after the stop, finds the index thread gone.
        with contextlib.suppress(RuntimeError):
            await reading
        await spool.close()

    asyncio.run(run())
    with QueueIndex(tmp_path / "queue.db", readonly=True) as index:
        assert [r.state for m in index.messages() for r in m.recipients] == [RecipientState.HELD]


def test_flush_index_writes_held_mail_at_once(tmp_path: Path) -> None:
    """An ATRN session asks for what its worker holds before reading the index: held mail
    still waiting for its batch is written then, not up to an interval later."""

    async def run() -> list[str]:
        spool = Spool(tmp_path / "spool")
        await spool.open()
        scheduler = holding_scheduler(spool, QueueIndex(tmp_path / "queue.db"))
        scheduler.start()
        ids = []
        for n in range(2):
            writer = spool.new_message()
            writer.write(f"Subject: {n}\r\n\r\nx\r\n".encode())
            envelope = Envelope("a@remote.test", ("bob@held.test",), received_at=time.time())
            stored = await spool.commit(writer, envelope)
            scheduler.submit(stored)
            ids.append(stored.queue_id)
            await asyncio.sleep(0.01)  # the first is written at once; the second must wait
        await scheduler.flush_index()
        with QueueIndex(tmp_path / "queue.db", readonly=True) as index:
            found = [m.queue_id for m in index.messages()]
        await scheduler.stop()
        await spool.close()
        assert found == ids
        return found

    assert len(asyncio.run(run())) == 2
