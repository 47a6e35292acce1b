"""Tests for the DATA phase: pigeon.smtp._data.DataReader directly, and through
ServerConnection (RFC 5321 section 4.5.2 transparency, 4.5.3.1.6 line length, SMTP smuggling).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from pigeon.smtp import (
    NEED_DATA,
    PAUSED,
    DataCommand,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageEnd,
    Reply,
    State,
    replies,
)
from pigeon.smtp._data import DataReader
from tests.smtp_helpers import (
    QUEUE_ID,
    Driver,
    codes,
    ehlo_session,
    kinds,
    reply_lines,
    settings,
    transaction_session,
)

QUEUED = f"250 2.0.0 Ok: queued as {QUEUE_ID}"
BARE = (
    "554 5.6.0 Message refused: bare <CR> or <LF> in message text; lines must end with <CR><LF>"
    " (RFC 5321 2.3.8)"
)
TOO_LONG = "554 5.6.0 Message refused: a line is longer than 1000 octets (RFC 5321 4.5.3.1.6)"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
NUL = "554 5.6.0 Message refused: NUL character in message text"


def read(
    chunks: list[bytes],
    *,
    max_size: int | None = None,
    max_line: int = 1000,
    reject_bare_line_ends: bool = True,
) -> tuple[bytes, DataReader, bytes]:
    """Feed chunks to a fresh reader as a connection would (one buffer, drained after each
    chunk); return (text, reader, bytes left in the buffer)."""
    reader = DataReader(
        max_size=max_size, max_line=max_line, reject_bare_line_ends=reject_bare_line_ends
    )
    buf = bytearray()
    text = b""
    for chunk in chunks:
        buf += chunk
        while piece := reader.feed(buf):
            text += piece
    return text, reader, bytes(buf)


def read_whole(data: bytes, **options: bool | int | None) -> tuple[bytes, DataReader, bytes]:
    return read([data], **options)  # type: ignore[arg-type]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def in_data(driver: Driver | None = None) -> Driver:
    """A driver whose connection has just answered DATA with 354; output drained."""
    driver = transaction_session(driver)
    assert reply_lines(driver.feed(b"DATA\r\n")) == ["354 End data with <CR><LF>.<CR><LF>"]
    driver.events.clear()
    return driver


# -- DataReader: the end of the message --------------------------------------------------------


def test_simple_message() -> None:
    text, reader, rest = read_whole(b"Subject: x\r\n\r\nhello\r\n.\r\n")
    assert text == b"Subject: x\r\n\r\nhello\r\n"
    assert reader.finished
    assert reader.refusal is None
    assert reader.size == len(text)
    assert rest == b""


def test_empty_message_right_after_354() -> None:
    text, reader, rest = read_whole(b".\r\n")
    assert (text, reader.finished, reader.size, rest) == (b"", True, 0, b"")


def test_message_of_one_empty_line() -> None:
    text, reader, _ = read_whole(b"\r\n.\r\n")
    assert (text, reader.finished) == (b"\r\n", True)


def test_nothing_is_consumed_after_the_terminator() -> None:
    text, reader, rest = read_whole(b"a\r\n.\r\nMAIL FROM:<x@y.test>\r\n")
    assert text == b"a\r\n"
    assert rest == b"MAIL FROM:<x@y.test>\r\n"
    buf = bytearray(rest)
    assert reader.feed(buf) == b""  # finished: leaves the buffer alone
    assert buf == rest


def test_no_terminator_yet() -> None:
    text, reader, rest = read_whole(b"line one\r\nline tw")
    assert text == b"line one\r\n"
    assert not reader.finished
    assert rest == b"line tw"


@pytest.mark.parametrize("partial", [b".", b".\r"])
def test_partial_terminator_waits(partial: bytes) -> None:
    text, reader, rest = read_whole(b"a\r\n" + partial)
    assert (text, reader.finished, rest) == (b"a\r\n", False, partial)


# -- DataReader: dot-unstuffing (4.5.2) -------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b"a\r\n..x\r\n.\r\n", b"a\r\n.x\r\n"),
        (b"a\r\n.x\r\n.\r\n", b"a\r\nx\r\n"),  # a client that forgot to stuff: drop the dot
        (b"..\r\n.\r\n", b".\r\n"),  # a stuffed "." on the very first line
        (b"..x\r\n.\r\n", b".x\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..\r\n..\r\n.\r\n", b"a\r\n.\r\n.\r\n"),
        (b"a.\r\nb..c\r\n.\r\n", b"a.\r\nb..c\r\n"),  # dots inside a line are data
        (b" .\r\n.\r\n", b" .\r\n"),
        (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n"),  # ends with a line holding one "."
    ],
)
def test_dot_unstuffing(wire: bytes, text: bytes) -> None:
    assert read_whole(wire)[0] == text
    assert read(one_byte_at_a_time(wire))[0] == text


MESSAGE_WIRE = b"From: a\r\n..dots\r\n.\r\n..\r\n\r\nlast\r\n.\r\nQUIT\r\n"
MESSAGE_TEXT = b"From: a\r\n.dots\r\n\r\n.\r\n\r\nlast\r\n"


def test_wire_fixture_is_what_the_test_thinks() -> None:
    # The third line of MESSAGE_WIRE is ".": the end. The rest is not part of the message.
    text, _, rest = read_whole(MESSAGE_WIRE)
    assert text == b"From: a\r\n.dots\r\n"
    assert rest == b"..\r\n\r\nlast\r\n.\r\nQUIT\r\n"


WIRE = b"From: a\r\n..dots\r\n..\r\n\r\n.x\r\nlast\r\n.\r\nQUIT\r\n"
TEXT = b"From: a\r\n.dots\r\n.\r\n\r\nx\r\nlast\r\n"


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_split_at_every_boundary_gives_the_same_text(cut: int) -> None:
    text, reader, rest = read([WIRE[:cut], WIRE[cut:]])
    assert (text, reader.finished, reader.size, rest) == (TEXT, True, len(TEXT), b"QUIT\r\n")


def test_one_byte_at_a_time_gives_the_same_text() -> None:
    text, reader, rest = read(one_byte_at_a_time(WIRE))
    assert (text, reader.finished, rest) == (TEXT, True, b"QUIT\r\n")


@pytest.mark.parametrize("cut", range(len(b".\r\n") + 1))
def test_empty_message_split_anywhere(cut: int) -> None:
    text, reader, rest = read([b".\r\nNOOP\r\n"[:cut], b".\r\nNOOP\r\n"[cut:]])
    assert (text, reader.finished, rest) == (b"", True, b"NOOP\r\n")


# -- DataReader: bare CR and LF, SMTP smuggling (CVE-2023-51764) --------------------------------

SMUGGLING_ENDS = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r"]


@pytest.mark.parametrize("fake", SMUGGLING_ENDS)
def test_fake_terminators_do_not_end_the_message_and_are_refused(fake: bytes) -> None:
    wire = b"a\r\nb" + fake + b"MAIL FROM:<x@y.test>\r\nc\r\n.\r\nNOOP\r\n"
    for chunks in ([wire], one_byte_at_a_time(wire)):
        _, reader, rest = read(chunks)
        assert reader.finished
        assert rest == b"NOOP\r\n"  # the real end was found, nothing earlier
        assert reader.refusal == replies.BARE_LINE_END_IN_DATA


@pytest.mark.parametrize("fake", SMUGGLING_ENDS)
def test_fake_terminators_are_kept_as_data_when_allowed(fake: bytes) -> None:
    wire = b"a\r\nb" + fake + b"MAIL FROM:<x@y.test>\r\nc\r\n.\r\nNOOP\r\n"
    for chunks in ([wire], one_byte_at_a_time(wire)):
        text, reader, rest = read(chunks, reject_bare_line_ends=False)
        assert reader.refusal is None
        assert rest == b"NOOP\r\n"
        if fake.startswith(b"\r\n."):
            # After a real CRLF the "." starts a line: it is the transparency dot, and goes.
            fake = b"\r\n" + fake[3:]
        assert text == b"a\r\nb" + fake + b"MAIL FROM:<x@y.test>\r\nc\r\n"


@pytest.mark.parametrize(
    "wire",
    [
        b"a\rb\r\n.\r\n",
        b"a\nb\r\n.\r\n",
        b"a\r\r\n.\r\n",
        b"\n.\r\n.\r\n",  # "\n." is a line of its own, not an end
        b"a\r\n\n.\r\n.\r\n",
        b"\r.\r\n.\r\n",
    ],
)
def test_any_bare_line_end_is_refused_by_default(wire: bytes) -> None:
    text, reader, _ = read_whole(wire)
    assert reader.finished
    assert reader.refusal == replies.BARE_LINE_END_IN_DATA
    assert text == b""


def test_bare_lf_first_line_then_real_end() -> None:
    # "\n.\r\n" right after 354: the first line is "\n." (bare LF) and only the later
    # CRLF.CRLF ends the message.
    text, reader, rest = read_whole(b"\n.\r\nx\r\n.\r\n", reject_bare_line_ends=False)
    assert (text, reader.finished, rest) == (b"\n.\r\nx\r\n", True, b"")


# -- DataReader: line length (4.5.3.1.6) -------------------------------------------------------


def test_line_of_exactly_1000_octets_is_accepted() -> None:
    line = b"x" * 998 + b"\r\n"
    for chunks in ([line + b".\r\n"], one_byte_at_a_time(line + b".\r\n")):
        text, reader, _ = read(chunks)
        assert (text, reader.refusal) == (line, None)


def test_line_of_1001_octets_is_refused() -> None:
    line = b"x" * 999 + b"\r\n"
    for chunks in ([line + b".\r\n"], one_byte_at_a_time(line + b".\r\n"), [line, b".\r\n"]):
        text, reader, _ = read(chunks)
        assert reader.finished
        assert reader.refusal == replies.LINE_TOO_LONG_IN_DATA
        assert text == b""


def test_stuffed_dot_does_not_count_toward_the_line_length() -> None:
    # RFC 5321 4.5.3.1.6: "not counting the leading dot duplicated for transparency".
    line = b"." + b"." + b"x" * 997 + b"\r\n"  # 1001 octets on the wire, 1000 in the text
    wire = b"first\r\n" + line + line + b".\r\n"
    for chunks in ([wire], one_byte_at_a_time(wire), [b"first\r\n", line, line, b".\r\n"]):
        text, reader, _ = read(chunks)
        assert reader.refusal is None
        assert text == b"first\r\n" + (b"." + b"x" * 997 + b"\r\n") * 2
    # One more octet is too many, stuffed or not.
    text, reader, _ = read_whole(b".." + b"x" * 998 + b"\r\n.\r\n")
    assert reader.refusal == replies.LINE_TOO_LONG_IN_DATA


def test_a_dot_inside_a_long_line_does_not_earn_the_allowance() -> None:
    _, reader, _ = read_whole(b"a\r\nx." + b"x" * 998 + b"\r\n.\r\n")
    assert reader.refusal == replies.LINE_TOO_LONG_IN_DATA


def test_long_line_in_a_block_with_short_lines() -> None:
    wire = b"short\r\n" * 50 + b"y" * 1200 + b"\r\n" + b"short\r\n" * 50 + b".\r\n"
    _, reader, _ = read_whole(wire)
    assert reader.refusal == replies.LINE_TOO_LONG_IN_DATA


def test_long_partial_line_is_not_hoarded() -> None:
    reader = DataReader(max_size=None, max_line=1000, reject_bare_line_ends=True)
    buf = bytearray(b"z" * 5000)
    assert reader.feed(buf) == b""
    assert reader.refusal == replies.LINE_TOO_LONG_IN_DATA
    assert len(buf) <= 1
    buf += b"z" * 5000 + b"\r"
    reader.feed(buf)
    assert buf == b"\r"  # kept: it may be the start of the CRLF before the terminator
    buf += b"\n.\r\nNOOP\r\n"
    assert reader.feed(buf) == b""
    assert reader.finished
    assert buf == b"NOOP\r\n"


def test_dot_after_a_discarded_long_line_is_not_a_terminator() -> None:
    # After a too-long partial line is dropped, the reader is mid-line: ".\r\n" there ends
    # that line, it is not the end of the message.
    _, reader, rest = read([b"w" * 2000, b".\r\nmore\r\n.\r\nNOOP\r\n"])
    assert reader.finished
    assert rest == b"NOOP\r\n"


def test_line_limit_is_configurable() -> None:
    assert read_whole(b"abcd\r\n.\r\n", max_line=6)[1].refusal is None
    assert read_whole(b"abcde\r\n.\r\n", max_line=6)[1].refusal == replies.LINE_TOO_LONG_IN_DATA


# -- DataReader: size and NUL ------------------------------------------------------------------


def test_size_counts_the_unstuffed_text() -> None:
    text, reader, _ = read_whole(b"..a\r\n..b\r\n.\r\n", max_size=8)
    assert (text, reader.size, reader.refusal) == (b".a\r\n.b\r\n", 8, None)


def test_message_of_exactly_the_limit_is_accepted_one_more_refused() -> None:
    body = b"x" * 98 + b"\r\n"
    assert read_whole(body + b".\r\n", max_size=100)[1].refusal is None
    _, reader, _ = read_whole(body + b"y\r\n.\r\n", max_size=100)
    assert reader.finished
    assert reader.refusal == replies.MESSAGE_TOO_BIG


def test_over_size_stops_handing_out_text() -> None:
    reader = DataReader(max_size=10, max_line=1000, reject_bare_line_ends=True)
    buf = bytearray(b"12345678\r\n")
    assert reader.feed(buf) == b"12345678\r\n"
    buf += b"more\r\n"
    assert reader.feed(buf) == b""
    buf += b"and more\r\n.\r\n"
    assert reader.feed(buf) == b""
    assert reader.finished
    assert reader.refusal == replies.MESSAGE_TOO_BIG


def test_nul_is_refused() -> None:
    _, reader, _ = read_whole(b"a\x00b\r\n.\r\n")
    assert reader.finished
    assert reader.refusal == replies.NUL_IN_DATA


def test_eight_bit_data_is_kept() -> None:
    body = "Grüße, 8BITMIME\r\n".encode() + bytes(range(0x80, 0x100)) + b"\r\n"
    assert read_whole(body + b".\r\n")[0] == body


def test_first_refusal_wins() -> None:
    _, reader, _ = read([b"a\x00\r\n", b"b\nc\r\n.\r\n"])
    assert reader.refusal == replies.NUL_IN_DATA
    _, reader, _ = read([b"b\nc\r\n", b"x" * 1200 + b"\r\n.\r\n"])
    assert reader.refusal == replies.BARE_LINE_END_IN_DATA


# -- through ServerConnection -----------------------------------------------------------------


def test_message_through_the_connection() -> None:
    driver = in_data()
    out = driver.feed(b"Subject: t\r\n\r\n..hidden dot\r\n.\r\n")
    assert reply_lines(out) == [QUEUED]
    assert driver.message_text() == b"Subject: t\r\n\r\n.hidden dot\r\n"
    assert driver.events[-1] == MessageEnd(len(b"Subject: t\r\n\r\n.hidden dot\r\n"))
    assert driver.conn.state is State.READY
    assert driver.conn.messages == 1


def test_empty_message_through_the_connection() -> None:
    driver = in_data()
    assert reply_lines(driver.feed(b".\r\n")) == [QUEUED]
    assert driver.events == [MessageEnd(0)]


def test_connection_split_one_byte_at_a_time() -> None:
    whole = in_data()
    whole.feed(WIRE)
    split = in_data()
    out = split.feed_chunks(one_byte_at_a_time(WIRE))
    assert split.message_text() == whole.message_text() == TEXT
    assert reply_lines(out) == [
        QUEUED,
        f"221 2.0.0 {split.conn.settings.hostname} Service closing transmission channel",
    ]


def test_transaction_ends_with_the_message() -> None:
    driver = in_data()
    out = driver.feed(b"x\r\n.\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert reply_lines(out) == [
        QUEUED,
        "503 5.5.1 Need MAIL command before RCPT",
        "503 5.5.1 Need MAIL command before DATA",
    ]


def test_refused_message_end_resets_the_transaction() -> None:
    driver = in_data(Driver(policy={MessageEnd: Reply.of(554, "Spam", "5.7.1")}))
    out = driver.feed(b"buy now\r\n.\r\nRCPT TO:<c@d.test>\r\n")
    assert reply_lines(out) == ["554 5.7.1 Spam", "503 5.5.1 Need MAIL command before RCPT"]
    assert driver.conn.messages == 0
    assert driver.conn.errors == 2


def test_temporary_failure_at_message_end() -> None:
    driver = in_data(Driver(policy={MessageEnd: replies.LOCAL_ERROR}))
    out = driver.feed(b"x\r\n.\r\n")
    assert reply_lines(out) == [
        "451 4.3.0 Local error in processing; message not accepted, try again"
    ]
    assert driver.conn.state is State.READY


def test_421_at_message_end_closes() -> None:
    driver = in_data(Driver(policy={MessageEnd: replies.shutting_down("mx")}))
    out = driver.feed(b"x\r\n.\r\nNOOP\r\n")
    assert codes(out) == [421]
    assert driver.closed


def test_pipelined_commands_after_the_terminator_wait_for_the_reply() -> None:
    driver = in_data()
    conn = driver.conn
    conn.receive_data(b"body\r\n.\r\nMAIL FROM:<next@b.test>\r\nNOOP\r\n")
    assert conn.next_event() == MessageData(b"body\r\n")
    assert conn.next_event() == MessageEnd(6)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert conn.buffered == len(b"MAIL FROM:<next@b.test>\r\nNOOP\r\n")
    conn.accept_message("Q9")
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    assert mail.sender is not None
    assert mail.sender.local_part == "next"
    conn.accept()
    assert conn.next_event() is NEED_DATA
    assert reply_lines(conn.data_to_send()) == [
        "250 2.0.0 Ok: queued as Q9",
        "250 2.1.0 Ok",
        "250 2.0.0 Ok",
    ]


def test_data_pipelined_with_the_body_before_354() -> None:
    # A client that does not wait for 354 (RFC 2920 forbids it, some do it): the body waits in
    # the buffer while DataCommand is pending, then is read as message text.
    driver = transaction_session()
    conn = driver.conn
    conn.receive_data(b"DATA\r\nline\r\n.\r\n")
    assert conn.next_event() == DataCommand()
    assert conn.next_event() is PAUSED
    conn.accept()
    assert conn.next_event() == MessageData(b"line\r\n")


def test_refused_data_command_reads_the_body_as_commands() -> None:
    driver = transaction_session(Driver(policy={DataCommand: replies.NO_VALID_RECIPIENTS}))
    out = driver.feed(b"DATA\r\nNOOP\r\n")
    assert reply_lines(out) == ["554 5.5.1 No valid recipients", "250 2.0.0 Ok"]
    assert kinds(driver.events) == ["DataCommand"]


# -- smuggling through the connection -----------------------------------------------------------

SMUGGLED = b"MAIL FROM:<admin@victim.test>\r\nRCPT TO:<target@victim.test>\r\nDATA\r\n"


@pytest.mark.parametrize("fake", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\r\n"])
def test_smuggling_refused_by_default(fake: bytes) -> None:
    driver = in_data()
    payload = (
        b"Subject: hello\r\n\r\nhi" + fake + SMUGGLED + b"Subject: forged\r\n\r\nevil\r\n.\r\n"
        b"NOOP\r\n"
    )
    out = driver.feed(payload)
    assert reply_lines(out) == [BARE, "250 2.0.0 Ok"]
    assert kinds(driver.events) == ["MessageAborted"]
    assert driver.events == [MessageAborted(replies.BARE_LINE_END_IN_DATA)]
    assert driver.conn.state is State.READY


@pytest.mark.parametrize("fake", [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n"])
def test_smuggling_kept_as_one_message_when_bare_line_ends_are_allowed(fake: bytes) -> None:
    driver = in_data(Driver(settings(reject_bare_line_ends=False)))
    body = b"Subject: hello\r\n\r\nhi" + fake + SMUGGLED + b"Subject: forged\r\n\r\nevil\r\n"
    out = driver.feed_chunks([body + b".\r\n", b"QUIT\r\n"])
    assert reply_lines(out)[0] == QUEUED
    assert codes(out) == [250, 221]
    # One message, byte for byte; the MAIL inside it was never a command. (After a real CRLF
    # a "." starts a line and is the transparency dot.)
    assert driver.message_text() == body.replace(b"\r\n.", b"\r\n")
    assert kinds(driver.events) == ["MessageData", "MessageEnd", "ConnectionClosed"]
    assert driver.conn.messages == 1


def test_smuggling_one_byte_at_a_time_is_still_one_message() -> None:
    driver = in_data(Driver(settings(reject_bare_line_ends=False)))
    body = b"hi\n.\n" + SMUGGLED + b"evil\r\n"
    driver.feed_chunks(one_byte_at_a_time(body + b".\r\n"))
    assert driver.message_text() == body
    assert sum(isinstance(e, MailFrom) for e in driver.events) == 0
    assert sum(isinstance(e, MessageEnd) for e in driver.events) == 1


# -- refusals through the connection ------------------------------------------------------------


def test_line_of_1001_octets_refused_after_the_terminator() -> None:
    driver = in_data()
    out = driver.feed(b"ok\r\n" + b"x" * 999 + b"\r\nmore\r\n")
    assert out == b""  # nothing is said before the end of the message
    out = driver.feed(b".\r\nNOOP\r\n")
    assert reply_lines(out) == [TOO_LONG, "250 2.0.0 Ok"]
    assert driver.events[-1] == MessageAborted(replies.LINE_TOO_LONG_IN_DATA)
    assert driver.conn.messages == 0


def test_line_of_1000_octets_accepted_through_the_connection() -> None:
    driver = in_data()
    line = b"x" * 998 + b"\r\n"
    assert reply_lines(driver.feed(line + b".\r\n")) == [QUEUED]
    assert driver.message_text() == line


def test_text_line_limit_is_configurable() -> None:
    driver = in_data(Driver(settings(max_text_line=2000)))
    line = b"x" * 1998 + b"\r\n"
    assert reply_lines(driver.feed(line + b".\r\n")) == [QUEUED]


def test_message_over_the_size_limit_then_the_session_continues() -> None:
    driver = in_data(Driver(settings(max_message_size=100)))
    out = driver.feed(b"x" * 98 + b"\r\n" + b"y\r\n" + b"z" * 500 + b"\r\n.\r\n")
    assert reply_lines(out) == [TOO_BIG]
    assert driver.events[-1] == MessageAborted(replies.MESSAGE_TOO_BIG)
    assert driver.conn.state is State.READY
    assert driver.conn.errors == 1
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nsmall\r\n.\r\n")
    assert reply_lines(out) == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        QUEUED,
    ]


def test_message_of_exactly_the_size_limit_is_accepted() -> None:
    driver = in_data(Driver(settings(max_message_size=100)))
    assert reply_lines(driver.feed(b"x" * 98 + b"\r\n.\r\n")) == [QUEUED]
    assert driver.events[-1] == MessageEnd(100)


def test_no_size_limit() -> None:
    driver = in_data(Driver(settings(max_message_size=0)))
    body = (b"x" * 998 + b"\r\n") * 200
    assert reply_lines(driver.feed(body + b".\r\n")) == [QUEUED]
    assert driver.message_text() == body


def test_nul_in_data_is_554() -> None:
    driver = in_data()
    out = driver.feed(b"a\x00b\r\n.\r\n")
    assert reply_lines(out) == [NUL]
    assert driver.events == [MessageAborted(replies.NUL_IN_DATA)]


def test_aborted_message_counts_toward_the_error_limit() -> None:
    driver = ehlo_session(Driver(settings(max_errors=2)))
    driver.feed(b"BOGUS\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    out = driver.feed(b"a\x00\r\n.\r\n")
    assert reply_lines(out) == [
        NUL,
        "421 4.7.0 mx.example.test Too many errors, closing transmission channel",
    ]
    assert kinds(driver.events)[-2:] == ["MessageAborted", "ConnectionClosed"]


def test_text_before_a_refusal_may_already_have_been_handed_out() -> None:
    # The program streams MessageData to the spool; MessageAborted tells it to drop that.
    driver = in_data(Driver(settings(max_message_size=10)))
    driver.feed(b"12345678\r\n")
    assert driver.message_text() == b"12345678\r\n"
    driver.feed(b"overflow\r\n.\r\n")
    assert driver.events[-1] == MessageAborted(replies.MESSAGE_TOO_BIG)
    assert not any(isinstance(e, MessageEnd) for e in driver.events)


def test_data_is_not_parsed_as_commands() -> None:
    driver = in_data()
    body = b"QUIT\r\nRSET\r\nMAIL FROM:<x@y.test>\r\n" + b"x" * 600 + b"\r\nNOOP\n\r\n"
    out = driver.feed(body + b".\r\n")
    assert reply_lines(out) == [BARE]  # the bare LF after NOOP; nothing else was a command
    driver = in_data(Driver(settings(reject_bare_line_ends=False)))
    out = driver.feed(body + b".\r\n")
    assert reply_lines(out) == [QUEUED]
    assert driver.message_text() == body


# The line check jumps from CRLF to CRLF a limit apart instead of splitting the text into
# lines; whatever the lines, it must agree with a plain split.
@hypothesis_settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=12)), min_size=1, max_size=40
    ),
    max_line=st.integers(min_value=4, max_value=12),
)
def test_line_limit_agrees_with_splitting_into_lines(
    lines: list[tuple[bool, int]], max_line: int
) -> None:
    original = [b"." * dotted + b"x" * length for dotted, length in lines]
    wire = [b"." + line if line.startswith(b".") else line for line in original]  # 4.5.2
    text, reader, _ = read_whole(b"".join(w + b"\r\n" for w in wire) + b".\r\n", max_line=max_line)
    # RFC 5321 4.5.3.1.6: the limit counts the CRLF, not the dot added for transparency.
    too_long = any(len(line) + 2 > max_line for line in original)
    assert reader.finished
    assert (reader.refusal == replies.LINE_TOO_LONG_IN_DATA) == too_long
    if not too_long:
        assert text == b"".join(line + b"\r\n" for line in original)


# The bare line-end check counts instead of scanning line by line; whatever the mix of CR, LF
# and text, it must refuse exactly the messages where some CR or LF is not part of a CRLF.
@hypothesis_settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from([b"x", b"\r", b"\n", b"\r\n", b"\r\n\r\n"]), max_size=30))
def test_bare_line_ends_found_whatever_the_mix(pieces: list[bytes]) -> None:
    text = b"".join(pieces)
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    _, reader, _ = read_whole(text + b".\r\n")
    assert reader.finished
    bare = text.replace(b"\r\n", b"").count(b"\r") + text.replace(b"\r\n", b"").count(b"\n")
    assert (reader.refusal == replies.BARE_LINE_END_IN_DATA) == (bare > 0)
