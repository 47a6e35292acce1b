"""Property tests for pigeon.smtp: whatever the client sends, however it is split, the core
never raises, always answers in well-formed reply lines, and does not depend on where the
bytes were cut."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.smtp import ConnectionClosed, Event, MessageAborted, MessageData, ServerSettings
from pigeon.smtp._data import DataReader
from tests.smtp_helpers import REPLY_LINE_RE, Driver
from tests.smtp_helpers import settings as server_settings

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that reach the interesting corners: commands in and out of order, DATA and its
# terminator, bare line ends, long lines, control and 8-bit bytes.
_TOKENS = [
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"HELO\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"MAIL FROM:<> SIZE=10 BODY=8BITMIME\r\n",
    b"MAIL FROM:<(Ralph Martin)>\r\n",
    b"SEND FROM:<a@b.test>\r\n",
    b"RCPT TO:<c@d.test>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b'RCPT TO:<"q\\"x"@[IPv6:::1]>\r\n',
    b"RCPT TO:<@r.test:c@d.test>\r\n",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"HELP\r\n",
    b"HELP MAIL\r\n",
    b"VRFY x\r\n",
    b"EXPN x\r\n",
    b"TURN\r\n",
    b"QUIT\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n.\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"\n.\n",
    b"\x00",
    b"\xff\xfe",
    b"x" * 600,
    b"EHLO [" + b"9" * 480 + b"]\r\n",  # client text echoed in a reply: lines stay <= 512
    b"HELO " + b"h" * 490 + b"\r\n",
    b"MAIL FROM:<(" + b"c" * 480 + b")>\r\n",
    b"RCPT TO:<(" + b"c" * 480 + b")a@b.test>\r\n",
    b"y" * 1100,
    b"text line\r\n",
    b"<",
    b">",
    b'"',
    b"(",
    b"\\",
    b":",
    b" ",
]

_smtpish = st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=40)), max_size=40).map(
    b"".join
)
_any_bytes = st.one_of(st.binary(max_size=3000), _smtpish)
_settings = st.sampled_from(
    [
        server_settings(),
        server_settings(classic=True),
        server_settings(reject_bare_line_ends=False, max_errors=0),
        server_settings(max_message_size=50, max_recipients=2, max_errors=3),
        server_settings(enhanced_status_codes=False, pipelining=False, eightbitmime=False),
    ]
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def check_output(out: bytes) -> None:
    assert out.endswith(b"\r\n") or out == b""
    for line in out.split(b"\r\n")[:-1]:
        assert REPLY_LINE_RE.fullmatch(line + b"\r\n"), line
        assert len(line) + 2 <= 512  # RFC 5321 4.5.3.1.5: a reply line is at most 512 octets


@FUZZ
@given(data=_any_bytes, cuts=st.lists(st.integers(min_value=0), max_size=20), conf=_settings)
def test_arbitrary_bytes_never_raise_and_replies_are_well_formed(
    data: bytes, cuts: list[int], conf: ServerSettings
) -> None:
    driver = Driver(conf)
    out = driver.greeting()
    for chunk in split(data, cuts):
        out += driver.feed(chunk)
    check_output(out)
    if driver.closed:
        last = out.split(b"\r\n")[-2]
        assert last[:3] in (b"221", b"421")
        assert driver.events[-1] == ConnectionClosed()
        assert driver.events.count(ConnectionClosed()) == 1


# -- random valid conversations, split anywhere -----------------------------------------------

_atom = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_+", min_size=1, max_size=12)
_local = st.one_of(
    _atom,
    st.builds(lambda a, b: f"{a}.{b}", _atom, _atom),
    st.text(alphabet=' abc"\\@<>().', max_size=8).map(
        lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
)
_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
_domain = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.just("[192.0.2.1]"),
    st.just("[IPv6:2001:db8::1]"),
)
_mailbox = st.builds(lambda local, domain: f"<{local}@{domain}>", _local, _domain)
_body_line = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
).map(lambda line: ("." + line if line.startswith(".") else line).encode() + b"\r\n")
_body = st.lists(_body_line, max_size=8).map(b"".join)


@st.composite
def _conversation(draw: st.DrawFn) -> bytes:
    parts = [b"EHLO " + draw(_label).encode() + b"\r\n"]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        sender = draw(st.one_of(st.just("<>"), _mailbox))
        params = draw(st.sampled_from(["", " SIZE=100", " BODY=8BITMIME", " BODY=7BIT SIZE=5"]))
        parts.append(f"MAIL FROM:{sender}{params}\r\n".encode())
        for recipient in draw(st.lists(_mailbox, min_size=1, max_size=3)):
            parts.append(f"RCPT TO:{recipient}\r\n".encode())
        extra = draw(st.sampled_from([b"", b"NOOP\r\n", b"VRFY someone\r\n", b"HELP RCPT\r\n"]))
        parts.append(extra)
        if draw(st.booleans()):
            parts.append(b"DATA\r\n" + draw(_body) + b".\r\n")
        else:
            parts.append(b"RSET\r\n")
    parts.append(b"QUIT\r\n")
    return b"".join(parts)


def run(conf: ServerSettings, chunks: list[bytes]) -> tuple[list[object], bytes]:
    driver = Driver(conf)
    out = driver.greeting()
    for chunk in chunks:
        out += driver.feed(chunk)
    # MessageData boundaries depend on how the bytes arrived; their concatenation does not.
    events: list[object] = [e for e in driver.events if not isinstance(e, MessageData)]
    return [*events, driver.message_text()], out


@FUZZ
@given(
    conversation=_conversation(),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
    conf=st.sampled_from([server_settings(), server_settings(classic=True)]),
)
def test_valid_conversations_give_the_same_replies_however_split(
    conversation: bytes, cuts: list[int], conf: ServerSettings
) -> None:
    whole_events, whole_out = run(conf, [conversation])
    split_events, split_out = run(conf, split(conversation, cuts))
    assert split_out == whole_out
    assert split_events == whole_events
    check_output(whole_out)
    # A valid conversation draws no error replies at all, and ends with QUIT.
    codes = [line[:3] for line in whole_out.split(b"\r\n")[:-1]]
    assert all(code[:1] in b"23" for code in codes), whole_out
    assert codes[-1] == b"221"


# -- the DATA reader: random bodies round-trip ----------------------------------------------------

_text_line = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120)
_dotty_line = st.one_of(
    _text_line, _text_line.map(lambda s: "." + s), _text_line.map(lambda s: ".." + s)
)


def stuff(lines: list[bytes]) -> bytes:
    """What a client sends for these lines: dot-stuffed, CRLF after each, then the end."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


@FUZZ
@given(
    lines=st.lists(_dotty_line.map(str.encode), max_size=30),
    cuts=st.lists(st.integers(min_value=0), max_size=30),
)
def test_data_reader_returns_the_original_text(lines: list[bytes], cuts: list[int]) -> None:
    wire = stuff(lines) + b".\r\nNEXT COMMAND\r\n"
    reader = DataReader(max_size=None, max_line=1000, reject_bare_line_ends=True)
    buf = bytearray()
    text = b""
    for chunk in split(wire, cuts):
        buf += chunk
        while piece := reader.feed(buf):
            text += piece
    assert reader.finished
    assert reader.refusal is None
    assert text == b"".join(line + b"\r\n" for line in lines)
    assert reader.size == len(text)
    assert bytes(buf) == b"NEXT COMMAND\r\n"


@FUZZ
@given(
    lines=st.lists(_dotty_line.map(str.encode), max_size=20),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_message_through_the_connection_round_trips(lines: list[bytes], cuts: list[int]) -> None:
    wire = (
        b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"
        + stuff(lines)
        + b".\r\nQUIT\r\n"
    )
    driver = Driver(server_settings())
    driver.greeting()
    for chunk in split(wire, cuts):
        driver.feed(chunk)
    assert driver.message_text() == b"".join(line + b"\r\n" for line in lines)
    assert driver.conn.messages == 1
    assert driver.closed


# -- any input: what is answered does not depend on where the bytes were cut -------------------


def reply_codes(out: bytes) -> list[bytes]:
    """Each reply line's code and enhanced status code, without the text.

    The text of a refused message may name a different reason depending on the cut: one
    block holding both a bare LF and a long line is refused for the length, two blocks for the
    bare LF first. Both are 554 5.6.0.
    """
    result = []
    for line in out.split(b"\r\n")[:-1]:
        code, _, rest = line.partition(b" ") if line[3:4] == b" " else line.partition(b"-")
        status = rest.split(b" ", 1)[0]
        result.append(code + (b" " + status if status[:1].isdigit() else b""))
    return result


@FUZZ
@given(data=_any_bytes, cuts=st.lists(st.integers(min_value=0), max_size=20), conf=_settings)
def test_any_input_gets_the_same_answers_however_split(
    data: bytes, cuts: list[int], conf: ServerSettings
) -> None:
    whole = Driver(conf)
    whole_out = whole.greeting() + whole.feed(data)
    cut = Driver(conf)
    cut_out = cut.greeting() + cut.feed_chunks(split(data, cuts))
    assert reply_codes(cut_out) == reply_codes(whole_out)

    # Same events, except how the message text was divided into MessageData pieces and the
    # reason inside a MessageAborted.
    def shape(events: list[Event]) -> list[object]:
        return [
            type(e).__name__ if isinstance(e, MessageAborted) else e
            for e in events
            if not isinstance(e, MessageData)
        ]

    assert shape(cut.events) == shape(whole.events)
