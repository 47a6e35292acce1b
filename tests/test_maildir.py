"""Tests for pigeon.delivery.maildir: real files under tmp_path, read back by mailbox.Maildir."""

from __future__ import annotations

import email
import email.policy
import errno
import io
import mailbox
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon.delivery.maildir import DEFAULT_CHUNK_SIZE, MaildirAgent
from pigeon.delivery.result import DeliveryResult, MaildirItem, Outcome
from pigeon.queue.envelope import Envelope

ARRIVAL = 1_700_000_000.75
HOST = "mx.example.test"
ALICE = "alice@example.test"

MESSAGE = (
    b"From: Bob <bob@example.test>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: lunch\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"\r\n"
    b"-- \r\n"
    b"Bob\r\n"
)


def envelope(sender: str = "bob@example.test") -> Envelope:
    return Envelope(sender=sender, recipients=(ALICE,), received_at=ARRIVAL)


def agent(*, fsync: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE) -> MaildirAgent:
    # The agent fsyncs by default; most tests turn that off for speed, and the tests that
    # check the protocol itself turn it back on.
    return MaildirAgent(hostname=HOST, fsync=fsync, chunk_size=chunk_size)


def deliver(
    md: Path,
    body: bytes | io.RawIOBase | io.BufferedIOBase = MESSAGE,
    *,
    unique: str = "Q1.0",
    the_agent: MaildirAgent | None = None,
    recipient: str = ALICE,
    env: Envelope | None = None,
    check_existing: bool = False,
) -> DeliveryResult:
    stream = io.BytesIO(body) if isinstance(body, bytes) else body
    return (the_agent or agent()).deliver(
        md,
        stream,
        recipient=recipient,
        envelope=env or envelope(),
        unique=unique,
        check_existing=check_existing,
    )


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def expected_file(body: bytes, sender: str = "bob@example.test", rcpt: str = ALICE) -> bytes:
    head = f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode()
    return head + body.replace(b"\r\n", b"\n")


class ShortReads(io.RawIOBase):
    """A stream that returns fewer bytes than asked, as pipes and sockets do.

    Each read returns the next size from ``sizes`` (cycled), cut back to just after the last
    CR in it when there is one, so that a CRLF is split between two reads as often as the
    data allows: the case a line-end converter most easily gets wrong.
    """

    def __init__(self, data: bytes, sizes: list[int], *, split_after_cr: bool = True) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes
        self._turn = 0
        self._split = split_after_cr

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._sizes[self._turn % len(self._sizes)])
        self._turn += 1
        piece = self._data[self._pos : self._pos + want]
        if self._split:
            cr = bytes(piece).rfind(b"\r")
            if cr >= 0:
                piece = piece[: cr + 1]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)

    def read(self, size: int = -1) -> bytes:
        # One short read per call, as a pipe gives; the agent must cope by reading again.
        buffer = bytearray(size if size >= 0 else len(self._data))
        n = self.readinto(memoryview(buffer))
        return bytes(buffer[:n])


# -- the message as readers see it ----------------------------------------------------------


def test_delivered_message_reads_back_with_mailbox_and_email(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    result = deliver(md, the_agent=agent(fsync=True))

    assert result == DeliveryResult(ALICE, Outcome.DELIVERED, "2.0.0", "delivered to maildir")
    box = mailbox.Maildir(md, factory=None, create=False)
    keys = box.keys()
    assert keys == [f"{int(ARRIVAL)}.Q1.0.{HOST}"]
    raw = box.get_bytes(keys[0])
    assert raw == expected_file(MESSAGE)
    assert b"\r" not in raw

    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert list(parsed.keys())[:2] == ["Return-Path", "Delivered-To"]
    assert parsed["Return-Path"] == "<bob@example.test>"
    assert parsed["Delivered-To"] == ALICE
    assert parsed["Subject"] == "lunch"
    assert parsed["Message-ID"] == "<1@example.test>"
    assert parsed.get_content() == "Shall we meet at noon?\n\n-- \nBob\n"


def test_message_is_new_and_unread(tmp_path: Path) -> None:
    deliver(tmp_path)
    box = mailbox.Maildir(tmp_path, factory=None, create=False)
    (message,) = box.values()
    assert isinstance(message, mailbox.MaildirMessage)
    assert message.get_subdir() == "new"
    assert message.get_flags() == ""  # no "S": unread
    assert files(tmp_path / "new") == [f"{int(ARRIVAL)}.Q1.0.{HOST}"]
    assert files(tmp_path / "tmp") == []


def test_null_sender_gives_empty_return_path(tmp_path: Path) -> None:
    deliver(tmp_path, env=envelope(sender=""))
    (name,) = files(tmp_path / "new")
    head = b"Return-Path: <>\nDelivered-To: alice@example.test\n"
    assert (tmp_path / "new" / name).read_bytes().startswith(head)


def test_utf8_addresses_are_kept(tmp_path: Path) -> None:
    deliver(tmp_path, env=envelope(sender="jörg@bücher.test"), recipient="zoë@example.test")
    (name,) = files(tmp_path / "new")
    head = "Return-Path: <jörg@bücher.test>\nDelivered-To: zoë@example.test\n".encode()
    assert (tmp_path / "new" / name).read_bytes().startswith(head)


def test_file_name_is_deterministic_and_hostname_escaped() -> None:
    odd = MaildirAgent(hostname="mx/1:a,b", fsync=False)
    assert odd.file_name(envelope=envelope(), unique="Q7.3") == (
        f"{int(ARRIVAL)}.Q7.3.mx\\0571\\072a\\054b"
    )


@pytest.mark.parametrize("unique", ["", "a/b", "a:2,S", "a,S=1", "a\x00b", "a b", "x" * 201])
def test_unique_that_would_break_the_file_name_is_refused(tmp_path: Path, unique: str) -> None:
    with pytest.raises(ValueError, match="unique"):
        deliver(tmp_path, unique=unique)
    assert not tmp_path.joinpath("new").exists()


def test_empty_or_control_hostname_is_refused() -> None:
    for bad in ("", "host\nname", "host\x00"):
        with pytest.raises(ValueError, match="hostname"):
            MaildirAgent(hostname=bad)


def test_body_without_final_line_end_and_empty_body(tmp_path: Path) -> None:
    no_newline = b"Subject: x\r\n\r\nno newline"
    assert deliver(tmp_path, no_newline, unique="a").outcome is Outcome.DELIVERED
    assert deliver(tmp_path, b"", unique="b").outcome is Outcome.DELIVERED
    new = tmp_path / "new"
    assert (new / f"{int(ARRIVAL)}.a.{HOST}").read_bytes() == expected_file(no_newline)
    assert (new / f"{int(ARRIVAL)}.b.{HOST}").read_bytes() == expected_file(b"")


# -- CRLF to LF while streaming ---------------------------------------------------------------

# Pieces that make the interesting cases frequent: CRLF, bare CR, bare LF, CR CR LF, text.
PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b"\r\r\n", b"\n\r", b"x", b"line of text"])


@settings(max_examples=300, deadline=None)
@given(
    body=st.lists(PIECES, max_size=200).map(b"".join),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=20),
    chunk_size=st.integers(1, 64),
    split_after_cr=st.booleans(),
)
def test_crlf_becomes_lf_across_any_chunk_boundary(
    tmp_path_factory: pytest.TempPathFactory,
    body: bytes,
    sizes: list[int],
    chunk_size: int,
    split_after_cr: bool,
) -> None:
    md = tmp_path_factory.mktemp("md")
    stream = ShortReads(body, sizes, split_after_cr=split_after_cr)
    result = deliver(md, stream, the_agent=agent(chunk_size=chunk_size))
    assert result.outcome is Outcome.DELIVERED
    (name,) = files(md / "new")
    assert (md / "new" / name).read_bytes() == expected_file(body)


def test_five_mib_with_every_chunk_boundary_inside_a_crlf(tmp_path: Path) -> None:
    # One byte of prefix, then 64-byte lines: line i has its CR at offset 64 * i + 63, so the
    # last byte of every 64 KiB chunk (offset 65536 * k - 1) is a CR whose LF opens the next.
    line = b"y" * 62 + b"\r\n"
    body = b"X" + line * (5 * 1024 * 1024 // len(line))
    assert body[DEFAULT_CHUNK_SIZE - 1 : DEFAULT_CHUNK_SIZE + 1] == b"\r\n"
    result = deliver(tmp_path, body, the_agent=agent(fsync=True))
    assert result.outcome is Outcome.DELIVERED
    (name,) = files(tmp_path / "new")
    assert (tmp_path / "new" / name).read_bytes() == expected_file(body)


@settings(max_examples=4, deadline=None)
@given(
    pattern=st.lists(PIECES, min_size=1, max_size=40).map(b"".join),
    sizes=st.lists(st.integers(4096, 200_000), min_size=1, max_size=8),
)
def test_five_mib_random_bodies_convert_like_bytes_replace(
    tmp_path_factory: pytest.TempPathFactory, pattern: bytes, sizes: list[int]
) -> None:
    body = pattern * (5 * 1024 * 1024 // len(pattern) + 1)
    md = tmp_path_factory.mktemp("big")
    assert deliver(md, ShortReads(body, sizes)).outcome is Outcome.DELIVERED
    (name,) = files(md / "new")
    assert (md / "new" / name).read_bytes() == expected_file(body)


def test_body_is_read_in_chunks_never_whole(tmp_path: Path) -> None:
    asked: list[int] = []

    class Recording(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            asked.append(-1 if size is None else size)
            return super().read(size)

    deliver(tmp_path, Recording(b"a\r\n" * 100_000))
    assert asked
    assert all(0 < size <= DEFAULT_CHUNK_SIZE for size in asked)


# -- idempotence -------------------------------------------------------------------------------


def test_same_unique_twice_leaves_one_file(tmp_path: Path) -> None:
    first = deliver(tmp_path)
    second = deliver(tmp_path)
    assert first.outcome is second.outcome is Outcome.DELIVERED
    assert second.detail == "already delivered"
    assert len(files(tmp_path / "new")) == 1
    assert files(tmp_path / "tmp") == []


def test_check_existing_finds_message_moved_to_cur(tmp_path: Path) -> None:
    deliver(tmp_path)
    (name,) = files(tmp_path / "new")
    os.rename(tmp_path / "new" / name, tmp_path / "cur" / f"{name}:2,S")
    box = mailbox.Maildir(tmp_path, factory=None, create=False)
    assert [m.get_flags() for m in box.values()] == ["S"]

    again = deliver(tmp_path, check_existing=True)

    assert again == DeliveryResult(ALICE, Outcome.DELIVERED, "2.0.0", "already delivered")
    assert files(tmp_path / "new") == []
    assert files(tmp_path / "cur") == [f"{name}:2,S"]
    assert files(tmp_path / "tmp") == []
    assert len(mailbox.Maildir(tmp_path, factory=None, create=False)) == 1


@pytest.mark.parametrize("suffix", ["", ":2,", ":2,RS", ",S=400:2,S", ",S=400,W=410:2,"])
def test_check_existing_knows_other_readers_names(tmp_path: Path, suffix: str) -> None:
    name = agent().file_name(envelope=envelope(), unique="Q1.0")
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "cur" / f"{name}{suffix}").write_bytes(b"x")
    assert deliver(tmp_path, check_existing=True).detail == "already delivered"
    assert files(tmp_path / "new") == []


def test_check_existing_is_not_fooled_by_a_longer_name(tmp_path: Path) -> None:
    # unique "a" gives "<t>.a.<host>"; unique "a.<host>" gives "<t>.a.<host>.<host>", which
    # starts with the first name but is another message.
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    longer = agent().file_name(envelope=envelope(), unique=f"a.{HOST}")
    (tmp_path / "cur" / f"{longer}:2,S").write_bytes(b"x")
    result = deliver(tmp_path, unique="a", check_existing=True)
    assert result.detail == "delivered to maildir"
    assert files(tmp_path / "new") == [agent().file_name(envelope=envelope(), unique="a")]


def test_check_existing_removes_leftovers_of_a_crashed_attempt(tmp_path: Path) -> None:
    name = agent().file_name(envelope=envelope(), unique="Q1.0")
    other = agent().file_name(envelope=envelope(), unique="Q1.1")
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "tmp" / f"{name},P1R00").write_bytes(b"half a mess")
    (tmp_path / "tmp" / f"{other},P1R00").write_bytes(b"someone else's")

    assert deliver(tmp_path, check_existing=True).detail == "delivered to maildir"
    assert files(tmp_path / "tmp") == [f"{other},P1R00"]
    assert (tmp_path / "new" / name).read_bytes() == expected_file(MESSAGE)


def test_without_check_existing_cur_is_not_scanned(tmp_path: Path) -> None:
    # The cheap path is the contract: only recovery pays for the directory scan.
    deliver(tmp_path)
    (name,) = files(tmp_path / "new")
    os.rename(tmp_path / "new" / name, tmp_path / "cur" / f"{name}:2,S")
    assert deliver(tmp_path).detail == "delivered to maildir"
    assert files(tmp_path / "new") == [name]


# -- creating the Maildir --------------------------------------------------------------------


def test_missing_maildir_and_parents_are_created_private(tmp_path: Path) -> None:
    md = tmp_path / "home" / "alice" / "Maildir"
    assert deliver(md, the_agent=agent(fsync=True)).outcome is Outcome.DELIVERED
    for path in (md, md / "tmp", md / "new", md / "cur"):
        mode = path.stat().st_mode
        assert stat.S_ISDIR(mode)
        assert mode & 0o077 == 0
    (name,) = files(md / "new")
    assert (md / "new" / name).stat().st_mode & 0o777 == 0o600


def test_missing_new_is_recreated(tmp_path: Path) -> None:
    for sub in ("tmp", "cur"):
        (tmp_path / sub).mkdir()
    assert deliver(tmp_path).outcome is Outcome.DELIVERED
    assert len(files(tmp_path / "new")) == 1


def test_threads_creating_one_maildir_at_once(tmp_path: Path) -> None:
    md = tmp_path / "shared"
    shared = agent()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda i: deliver(md, unique=f"Q{i}.0", the_agent=shared), range(32))
        )
    assert all(r.outcome is Outcome.DELIVERED for r in results)
    assert len(files(md / "new")) == 32
    assert files(md / "tmp") == []


# -- failures ----------------------------------------------------------------------------------


def assert_nothing_delivered(md: Path) -> None:
    assert files(md / "tmp") == []
    if (md / "new").is_dir():
        assert files(md / "new") == []


def test_new_that_is_a_regular_file_defers(tmp_path: Path) -> None:
    for sub in ("tmp", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new").write_bytes(b"not a directory")

    result = deliver(tmp_path)

    assert result.outcome is Outcome.DEFERRED
    assert result.status == "4.2.0"
    assert "Not a directory" in result.detail
    assert str(tmp_path) not in result.detail
    assert "Traceback" not in result.detail
    assert_nothing_delivered(tmp_path)


def test_maildir_path_that_is_a_regular_file_defers(tmp_path: Path) -> None:
    md = tmp_path / "alice"
    md.write_bytes(b"an mbox, perhaps")
    result = deliver(md)
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.2.0")
    assert md.read_bytes() == b"an mbox, perhaps"


def test_tmp_that_is_a_regular_file_defers(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_bytes(b"")
    result = deliver(tmp_path)
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.2.0")
    assert not (tmp_path / "new").exists() or files(tmp_path / "new") == []


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory modes"
)
def test_unwritable_new_defers_with_strerror(tmp_path: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new").chmod(0o500)
    try:
        result = deliver(tmp_path)
    finally:
        (tmp_path / "new").chmod(0o700)
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.3.0")
    assert "Permission denied" in result.detail
    assert_nothing_delivered(tmp_path)


def failing_fsync(code: int) -> Callable[[int], NoReturn]:
    def fsync(fd: int) -> NoReturn:
        raise OSError(code, os.strerror(code))

    return fsync


# No real full disk can be had here without mounting a file system, so these replace fsync,
# which is where a full disk shows up on delayed-allocation and network file systems.
@pytest.mark.parametrize(
    ("code", "status", "words"),
    [
        (errno.EDQUOT, "4.2.2", "mailbox full"),
        (errno.EFBIG, "4.2.2", "mailbox full"),
        (errno.ENOSPC, "4.3.1", "mail system full"),
        (errno.EIO, "4.3.0", "Input/output error"),
    ],
)
def test_disk_errors_defer_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, status: str, words: str
) -> None:
    monkeypatch.setattr(os, "fsync", failing_fsync(code))
    result = deliver(tmp_path, the_agent=agent(fsync=True))
    assert (result.outcome, result.status) == (Outcome.DEFERRED, status)
    assert words in result.detail
    assert_nothing_delivered(tmp_path)


class BrokenSpool(io.RawIOBase):
    def __init__(self, error: BaseException) -> None:
        self._error = error
        self._served = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if not self._served:
            self._served = True
            return b"Subject: half\r\n"
        raise self._error


def test_unreadable_spool_defers_and_leaves_nothing(tmp_path: Path) -> None:
    result = deliver(tmp_path, BrokenSpool(OSError(errno.EIO, "Input/output error")))
    assert (result.outcome, result.status) == (Outcome.DEFERRED, "4.3.0")
    assert result.detail == "cannot read the queued message: Input/output error"
    assert_nothing_delivered(tmp_path)


def test_unexpected_exception_propagates_but_tmp_is_cleaned(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="bug"):
        deliver(tmp_path, BrokenSpool(RuntimeError("bug")))
    assert_nothing_delivered(tmp_path)


@pytest.mark.parametrize(
    ("recipient", "sender", "status"),
    [
        ("alice@example.test\r\nBcc: eve@example.test", "bob@example.test", "5.1.3"),
        ("alice\x00@example.test", "bob@example.test", "5.1.3"),
        (ALICE, "bob@example.test\nX-Evil: 1", "5.1.7"),
    ],
)
def test_header_injection_through_addresses_fails_permanently(
    tmp_path: Path, recipient: str, sender: str, status: str
) -> None:
    result = deliver(tmp_path, recipient=recipient, env=envelope(sender=sender))
    assert (result.outcome, result.status) == (Outcome.FAILED, status)
    assert not (tmp_path / "new").exists()


def iter_names(md: Path) -> Iterator[str]:
    for sub in ("tmp", "new", "cur"):
        yield from (f"{sub}/{n}" for n in files(md / sub))


def test_failure_after_success_keeps_the_delivered_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A redelivery that fails (disk full) must not touch the copy already there.
    deliver(tmp_path)
    before = list(iter_names(tmp_path))
    monkeypatch.setattr(os, "fsync", failing_fsync(errno.ENOSPC))
    assert deliver(tmp_path, the_agent=agent(fsync=True)).outcome is Outcome.DEFERRED
    assert list(iter_names(tmp_path)) == before


def test_a_batch_syncs_every_file_before_linking_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A link between two fsyncs would make each fsync commit a journal transaction of its
    # own; and no name may appear in new/ before its file is on disk.
    calls: list[str] = []
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def link(src: str | Path, dst: str | Path) -> None:
        calls.append("link")
        real_link(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    items = [
        MaildirItem(tmp_path, io.BytesIO(MESSAGE), ALICE, envelope(), f"Q{n}.0") for n in range(3)
    ]
    results = agent(fsync=True).deliver_many(items)
    assert [r.outcome for r in results] == [Outcome.DELIVERED] * 3
    # The first fsync creating the Maildir's directories is theirs; then the files, then links.
    files_synced = calls[calls.index("link") - 3 : calls.index("link")]
    assert files_synced == ["fsync"] * 3
    assert calls[-3:] == ["link"] * 3
    assert len(files(tmp_path / "new")) == 3


def test_a_failed_sync_in_a_batch_defers_only_its_own_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(fd)
        if len(synced) == 2:  # the second file of the batch (the Maildir exists already)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    deliver(tmp_path, unique="Q0.0")  # the Maildir's directories, without fsync
    monkeypatch.setattr(os, "fsync", fsync)
    items = [
        MaildirItem(tmp_path, io.BytesIO(MESSAGE), ALICE, envelope(), f"Q{n}.0")
        for n in range(1, 4)
    ]
    results = agent(fsync=True).deliver_many(items)
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DEFERRED, Outcome.DELIVERED]
    assert "Input/output error" in results[1].detail
    names = files(tmp_path / "new")
    assert len(names) == 3  # Q0, Q1 and Q3
    assert not any(".Q2.0." in name for name in names)
    assert files(tmp_path / "tmp") == []


def test_a_bug_mid_batch_propagates_and_leaves_no_tmp_file_of_the_batch(tmp_path: Path) -> None:
    items = [
        MaildirItem(tmp_path, io.BytesIO(MESSAGE), ALICE, envelope(), "Q1.0"),
        MaildirItem(tmp_path, BrokenSpool(RuntimeError("bug")), ALICE, envelope(), "Q2.0"),
        MaildirItem(tmp_path, io.BytesIO(MESSAGE), ALICE, envelope(), "Q3.0"),
    ]
    with pytest.raises(RuntimeError, match="bug"):
        agent(fsync=True).deliver_many(items)
    assert files(tmp_path / "tmp") == []  # the first item's file too, staged before the bug
    assert files(tmp_path / "new") == []
