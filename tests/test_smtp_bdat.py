"""pigeon.smtp: BDAT, CHUNKING and BINARYMIME (RFC 3030) in the server core, with no sockets."""

from __future__ import annotations

import pytest

from pigeon.smtp import (
    DataCommand,
    Event,
    MessageAborted,
    MessageData,
    MessageEnd,
    RcptTo,
    Reply,
    State,
)
from pigeon.smtp._chunks import ChunkedMessage
from tests.smtp_helpers import (
    QUEUE_ID,
    Driver,
    ehlo_session,
    kinds,
    reply_lines,
    settings,
    transaction_session,
)

CHUNKING = settings(chunking=True, binarymime=True)
QUEUED = f"250 2.0.0 Ok: queued as {QUEUE_ID}"


def chunked(**overrides: object) -> Driver:
    """EHLO, MAIL and RCPT accepted on a server that offers CHUNKING."""
    return transaction_session(Driver(settings(chunking=True, binarymime=True, **overrides)))


def test_ehlo_lists_chunking_and_binarymime_only_when_set() -> None:
    driver = Driver(CHUNKING)
    driver.greeting()
    lines = reply_lines(driver.feed(b"EHLO c.test\r\n"))
    assert "250-CHUNKING" in lines
    assert "250-BINARYMIME" in lines
    driver = Driver(settings(chunking=True))
    driver.greeting()
    lines = reply_lines(driver.feed(b"EHLO c.test\r\n"))
    assert "250-CHUNKING" in lines
    assert "250-BINARYMIME" not in lines
    driver = Driver()
    driver.greeting()
    assert not any("CHUNKING" in line for line in reply_lines(driver.feed(b"EHLO c.test\r\n")))


def test_bdat_not_offered_is_502() -> None:
    driver = transaction_session()
    assert reply_lines(driver.feed(b"BDAT 3 LAST\r\n")) == ["502 5.5.1 Command not implemented"]


def test_one_last_chunk_is_the_whole_message() -> None:
    driver = chunked()
    out = driver.feed(b"BDAT 13 LAST\r\nHello\r\n.\r\nX\r\n")
    assert reply_lines(out) == [QUEUED]
    # No dot-unstuffing, no terminator: the octets exactly as counted.
    assert driver.message_text() == b"Hello\r\n.\r\nX\r\n"
    assert kinds(driver.events) == ["DataCommand", "MessageData", "MessageEnd"]
    assert driver.conn.state is State.READY
    assert driver.conn.messages == 1


def test_chunks_are_answered_one_by_one_and_pipelined_commands_follow() -> None:
    driver = chunked()
    out = driver.feed(b"BDAT 3\r\nabcBDAT 4\r\ndefgBDAT 0 LAST\r\nNOOP\r\n")
    assert reply_lines(out) == [
        "250 2.0.0 3 octets received",
        "250 2.0.0 4 octets received",
        QUEUED,
        "250 2.0.0 Ok",
    ]
    assert driver.message_text() == b"abcdefg"
    (end,) = [e for e in driver.events if isinstance(e, MessageEnd)]
    assert end.size == 7


def test_chunk_bytes_may_arrive_one_at_a_time() -> None:
    driver = chunked()
    data = b"BDAT 5 LAST\r\nA\r\nBC"
    out = b"".join(driver.feed(data[i : i + 1]) for i in range(len(data)))
    assert reply_lines(out) == [QUEUED]
    assert driver.message_text() == b"A\r\nBC"


def test_bdat_0_last_alone_is_an_empty_message() -> None:
    driver = chunked()
    assert reply_lines(driver.feed(b"BDAT 0 LAST\r\n")) == [QUEUED]
    assert driver.message_text() == b""


def test_a_chunk_that_never_ends_stores_nothing() -> None:
    """The client said 100 octets and sent 20, then commands: they are message text, and no
    MessageEnd comes until the count is met."""
    driver = chunked()
    out = driver.feed(b"BDAT 100 LAST\r\nshort\r\nQUIT\r\nRSET\r\n")
    assert out == b""
    assert driver.conn.state is State.CHUNK
    assert not any(isinstance(e, MessageEnd) for e in driver.events)
    assert b"QUIT" in driver.message_text()
    assert not driver.conn.is_idle
    assert driver.conn.in_message


@pytest.mark.parametrize(
    ("setup", "reply"),
    [
        (b"", "503 5.5.1 Need MAIL command before BDAT"),
        (b"MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Need RCPT command before BDAT"),
    ],
)
def test_bdat_out_of_sequence_is_503_and_its_chunk_is_skipped(setup: bytes, reply: str) -> None:
    driver = ehlo_session(Driver(CHUNKING))
    driver.feed(setup)
    out = driver.feed(b"BDAT 6\r\nNOOP\r\nNOOP\r\n")
    assert reply_lines(out) == [reply, "250 2.0.0 Ok"]  # "NOOP\r\n" was chunk data
    assert driver.message_text() == b""


def test_bdat_before_ehlo_is_503_and_skipped() -> None:
    driver = Driver(CHUNKING)
    driver.greeting()
    out = driver.feed(b"BDAT 4 LAST\r\nQUITNOOP\r\n")
    assert reply_lines(out) == ["503 Send HELO/EHLO first", "250 Ok"]


def test_bdat_after_every_recipient_refused_is_554_and_skipped() -> None:
    def policy(event: Event) -> Reply | None:
        return Reply.of(550, "no such user", "5.1.1") if isinstance(event, RcptTo) else None

    driver = ehlo_session(Driver(CHUNKING, policy=policy))
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@b.test>\r\nBDAT 4 LAST\r\nQUIT")
    assert reply_lines(out) == [
        "250 2.1.0 Ok",
        "550 5.1.1 no such user",
        "554 5.5.1 No valid recipients",
    ]
    assert driver.conn.state is State.MAIL


def test_data_after_bdat_in_the_same_transaction_is_503() -> None:
    driver = chunked()
    out = driver.feed(b"BDAT 2\r\nabDATA\r\nRCPT TO:<c@d.test>\r\n")
    assert reply_lines(out) == [
        "250 2.0.0 2 octets received",
        "503 5.5.1 DATA not allowed during a BDAT transaction",
        "503 5.5.1 RCPT not allowed during a BDAT transaction",
    ]
    assert reply_lines(driver.feed(b"BDAT 1 LAST\r\nc")) == [QUEUED]
    assert driver.message_text() == b"abc"


def test_rset_between_chunks_drops_the_message() -> None:
    driver = chunked()
    out = driver.feed(b"BDAT 2\r\nabRSET\r\nBDAT 1 LAST\r\nx")
    assert reply_lines(out) == [
        "250 2.0.0 2 octets received",
        "250 2.0.0 Ok",
        "503 5.5.1 Need MAIL command before BDAT",
    ]
    assert "Reset" in kinds(driver.events)
    assert not any(isinstance(e, MessageEnd) for e in driver.events)


def test_size_limit_counts_every_chunk() -> None:
    driver = chunked(max_message_size=10)
    out = driver.feed(b"BDAT 6\r\n123456BDAT 6 LAST\r\n7890ab")
    assert reply_lines(out) == [
        "250 2.0.0 6 octets received",
        "552 5.3.4 Message size exceeds fixed maximum message size",
    ]
    aborted = [e for e in driver.events if isinstance(e, MessageAborted)]
    assert len(aborted) == 1
    assert driver.conn.state is State.READY
    # The next transaction works, and the skipped octets were never taken for commands.
    assert reply_lines(driver.feed(b"NOOP\r\n")) == ["250 2.0.0 Ok"]


def test_first_chunk_over_the_limit_is_552_and_skipped() -> None:
    driver = chunked(max_message_size=4)
    out = driver.feed(b"BDAT 6 LAST\r\nRSET\r\nNOOP\r\n")
    assert reply_lines(out) == [
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "250 2.0.0 Ok",
    ]
    assert "DataCommand" not in kinds(driver.events)


def test_binarymime_needs_bdat() -> None:
    driver = ehlo_session(Driver(CHUNKING))
    out = driver.feed(b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert reply_lines(out) == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "503 5.5.1 BODY=BINARYMIME requires BDAT, not DATA",
    ]
    binary = bytes(range(256)) * 8  # NUL, bare CR and LF, 2048 octets without a line end
    out = driver.feed(b"BDAT %d LAST\r\n" % len(binary) + binary)
    assert reply_lines(out) == [QUEUED]
    assert driver.message_text() == binary


def test_binarymime_not_offered_is_504() -> None:
    driver = ehlo_session(Driver(settings(chunking=True)))
    out = driver.feed(b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")
    assert reply_lines(out) == ["504 5.5.4 BODY=BINARYMIME is not offered"]


@pytest.mark.parametrize(
    ("chunks", "reply"),
    [
        ([b"a" * 999, b"\r\n"], "554 5.6.0 Message refused: a line is longer"),
        ([b"abc\x00"], "554 5.6.0 Message refused: NUL character"),
        ([b"abc\ndef\r\n"], "554 5.6.0 Message refused: bare <CR> or <LF>"),
        ([b"abc\r", b"def"], "554 5.6.0 Message refused: bare <CR> or <LF>"),
        ([b"abc\r"], "554 5.6.0 Message refused: bare <CR> or <LF>"),
    ],
)
def test_text_rules_apply_across_chunks_unless_binarymime(chunks: list[bytes], reply: str) -> None:
    driver = chunked()
    wire = b"".join(
        b"BDAT %d%s\r\n%s" % (len(c), b" LAST" if i == len(chunks) - 1 else b"", c)
        for i, c in enumerate(chunks)
    )
    lines = reply_lines(driver.feed(wire))
    assert lines[-1].startswith(reply)
    assert any(isinstance(e, MessageAborted) for e in driver.events)
    assert not any(isinstance(e, MessageEnd) for e in driver.events)


def test_a_line_split_between_chunks_is_fine() -> None:
    driver = chunked()
    line = b"x" * 500
    out = driver.feed(b"BDAT 500\r\n" + line + b"BDAT 500 LAST\r\n" + line[:-2] + b"\r\n")
    assert reply_lines(out)[-1] == QUEUED
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    out = driver.feed(b"BDAT 3\r\nab\rBDAT 1 LAST\r\nx")
    assert reply_lines(out)[-1].startswith("554 5.6.0 Message refused: bare")


@pytest.mark.parametrize("argument", [b"", b"x", b"-1", b"1 LASTX", b"1 LAST X", b"1  LAST"])
def test_bdat_syntax_errors_are_501(argument: bytes) -> None:
    driver = chunked()
    out = driver.feed(b"BDAT " + argument + b"\r\n")
    assert reply_lines(out) == ["501 5.5.4 Syntax: BDAT <size> [LAST]"]


def test_refused_first_chunk_is_still_read() -> None:
    def policy(event: Event) -> Reply | None:
        busy = Reply.of(451, "try later", "4.3.0")
        return busy if isinstance(event, DataCommand) else None

    driver = transaction_session(Driver(CHUNKING, policy=policy))
    out = driver.feed(b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n")
    assert reply_lines(out) == ["451 4.3.0 try later", "250 2.0.0 Ok"]
    assert driver.conn.state is State.READY


def test_chunked_message_checks() -> None:
    message = ChunkedMessage(max_size=10, max_line=1000, reject_bare_line_ends=True, binary=False)
    assert message.fits(10)
    assert not message.fits(11)
    message.add(b"12345")
    assert message.fits(5)
    assert not message.fits(6)
    message.add(b"\r")
    message.add(b"\n")
    message.finish()
    assert message.refusal is None
    assert message.size == 7


def test_message_data_events_are_the_chunk_octets() -> None:
    driver = chunked()
    driver.feed(b"BDAT 5 LAST\r\n\r\n.\r\n")
    data = [e.data for e in driver.events if isinstance(e, MessageData)]
    assert b"".join(data) == b"\r\n.\r\n"
    assert driver.events[-1] == MessageEnd(5)
