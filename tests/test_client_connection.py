"""The client side of ``pigeon.smtp`` with no sockets: ``ReplyParser``, ``ClientConnection``,
``dot_stuff`` and ``Extensions``, and a client core talking to a ``ServerConnection``."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.smtp import (
    ClientConnection,
    DataCommand,
    Extensions,
    Hello,
    MailFrom,
    MessageData,
    MessageEnd,
    RcptTo,
    Reply,
    ReplyError,
    ReplyParser,
    dot_stuff,
)
from pigeon.smtp import replies as catalogue
from tests.smtp_helpers import Driver, kinds

# -- ReplyParser ------------------------------------------------------------------------------


def parse(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.receive_data(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def test_single_line_reply() -> None:
    (reply,) = parse(b"220 mx.example.test ESMTP ready\r\n")
    assert reply == Reply(220, ("mx.example.test ESMTP ready",), None)


def test_multi_line_reply_is_one_reply() -> None:
    (reply,) = parse(b"250-mx.example.test\r\n250-PIPELINING\r\n250 HELP\r\n")
    assert reply.code == 250
    assert reply.lines == ("mx.example.test", "PIPELINING", "HELP")


def test_enhanced_status_code_is_split_off_every_line() -> None:
    (reply,) = parse(b"550-5.1.1 first\r\n550 5.1.1 <bob@example.test>: User unknown\r\n")
    assert reply.status == "5.1.1"
    assert reply.lines == ("first", "<bob@example.test>: User unknown")
    assert reply.text == "first <bob@example.test>: User unknown"


def test_enhanced_code_of_another_class_is_left_in_the_text() -> None:
    # RFC 3463: the class of the enhanced code is the first digit of the reply code.
    (reply,) = parse(b"250 5.0.0 odd\r\n")
    assert reply.status is None
    assert reply.lines == ("5.0.0 odd",)


def test_reply_with_no_text_and_with_only_a_status() -> None:
    assert parse(b"250\r\n") == [Reply(250, ("",), None)]
    assert parse(b"250 2.0.0\r\n") == [Reply(250, ("",), "2.0.0")]
    # smtp-sink ends its EHLO reply with "250 " and nothing after it.
    (ehlo,) = parse(b"250-smtp-sink\r\n250-PIPELINING\r\n250 \r\n")
    assert ehlo.lines == ("smtp-sink", "PIPELINING", "")


def test_replies_in_one_read_come_out_in_order() -> None:
    replies = parse(b"250 2.1.0 Ok\r\n550 5.1.1 no\r\n250 2.1.5 Ok\r\n354 go\r\n")
    assert [r.code for r in replies] == [250, 550, 250, 354]


def test_a_reply_split_anywhere_waits_for_its_end() -> None:
    data = b"250-first\r\n250-second\r\n250 last\r\n"
    parser = ReplyParser()
    for byte in data[:-1]:
        parser.receive_data(bytes([byte]))
        assert parser.next_reply() is None
    parser.receive_data(data[-1:])
    reply = parser.next_reply()
    assert reply is not None
    assert reply.lines == ("first", "second", "last")
    assert parser.buffered == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"hello there\r\n",
        b"HTTP/1.1 400 Bad Request\r\n",
        b"600 no such class\r\n",
        b"160 too low\r\n",
        b"2x0 letters\r\n",
        b"25 short\r\n",
        b"250Ok\r\n",  # the code must be followed by SP or "-"
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",  # a TLS ClientHello
    ],
)
def test_garbage_is_a_reply_error(garbage: bytes) -> None:
    with pytest.raises(ReplyError):
        parse(garbage)


def test_code_changing_mid_reply_is_a_reply_error() -> None:
    with pytest.raises(ReplyError, match="changed"):
        parse(b"250-mx.example.test\r\n251 PIPELINING\r\n")


def test_endless_unterminated_line_is_a_reply_error() -> None:
    parser = ReplyParser()
    parser.receive_data(b"250 " + b"x" * (ReplyParser.MAX_LINE + 1))
    with pytest.raises(ReplyError, match="too long"):
        parser.next_reply()


def test_endless_continuation_lines_are_a_reply_error() -> None:
    parser = ReplyParser()
    parser.receive_data(b"250-more\r\n" * (ReplyParser.MAX_LINES + 1))
    with pytest.raises(ReplyError, match="too many lines"):
        parser.next_reply()


def test_overlong_line_is_refused_however_it_arrives() -> None:
    with pytest.raises(ReplyError):
        parse(b"250 " + b"x" * (ReplyParser.MAX_LINE + 1) + b"\r\n")


# -- Extensions -------------------------------------------------------------------------------


def ehlo_reply(*lines: str) -> Reply:
    return Reply(250, ("mx.example.test greets you", *lines))


def test_extensions_are_parsed_from_the_ehlo_reply() -> None:
    ext = Extensions.from_reply(
        ehlo_reply("pipelining", "SIZE 10240000", "8BITMIME", "AUTH plain LOGIN", "CHUNKING")
    )
    assert "PIPELINING" in ext
    assert "Pipelining" in ext
    assert "chunking" in ext
    assert "STARTTLS" not in ext
    assert ext.get("size") == ("10240000",)
    assert ext.size_limit == 10240000
    assert ext.auth_mechanisms == ("PLAIN", "LOGIN")
    # The first line is the server's name, never a keyword.
    assert "MX.EXAMPLE.TEST" not in ext


@pytest.mark.parametrize(
    ("line", "limit"),
    [("SIZE", None), ("SIZE 0", None), ("SIZE lots", None), ("SIZE 1000", 1000)],
)
def test_size_limit(line: str, limit: int | None) -> None:
    ext = Extensions.from_reply(ehlo_reply(line))
    assert "SIZE" in ext
    assert ext.size_limit == limit


def test_no_extensions() -> None:
    ext = Extensions.from_reply(Reply.of(250, "mx.example.test"))
    assert ext.keywords == {}
    assert ext.size_limit is None
    assert ext.auth_mechanisms == ()
    assert Extensions.from_reply(ehlo_reply("")).keywords == {}


# -- dot_stuff --------------------------------------------------------------------------------


def test_leading_dots_are_doubled() -> None:
    assert dot_stuff(b".first\r\nmiddle\r\n.\r\n..two\r\n") == (
        b"..first\r\nmiddle\r\n..\r\n...two\r\n.\r\n"
    )


def test_dots_inside_lines_are_left_alone() -> None:
    assert dot_stuff(b"a.b\r\n x.\r\n") == b"a.b\r\n x.\r\n.\r\n"


def test_bare_lf_and_bare_cr_become_crlf() -> None:
    assert dot_stuff(b"one\ntwo\rthree\r\n") == b"one\r\ntwo\r\nthree\r\n.\r\n"
    # A dot after a bare line end is at the start of a line too.
    assert dot_stuff(b"x\n.y\r.z") == b"x\r\n..y\r\n..z\r\n.\r\n"


def test_missing_final_line_end_is_added() -> None:
    assert dot_stuff(b"no newline") == b"no newline\r\n.\r\n"


def test_empty_body() -> None:
    assert dot_stuff(b"") == b".\r\n"


_LINE_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"x"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINE_BYTES, max_size=12), st.sampled_from([b"\r\n", b"\n", b"\r"]))
def test_dot_stuffed_text_reads_back_through_the_server(lines: list[bytes], eol: bytes) -> None:
    """Whatever the text, the server's DATA reader gets back the text with CRLF line ends."""
    text = eol.join(lines)
    expected = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    driver = Driver()
    driver.greeting()
    out = driver.feed(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    out = driver.feed(dot_stuff(text))
    assert out.startswith(b"250 "), out
    assert driver.message_text() == expected


# -- ClientConnection -------------------------------------------------------------------------


def greeted() -> ClientConnection:
    conn = ClientConnection()
    conn.receive_data(b"220 mx.example.test ESMTP\r\n")
    assert conn.next_reply() == ("GREETING", Reply(220, ("mx.example.test ESMTP",)))
    return conn


def test_the_greeting_is_the_first_reply_expected() -> None:
    conn = ClientConnection()
    assert conn.outstanding == 1
    assert conn.next_reply() is None
    conn.receive_data(b"220 hi\r\n")
    answer = conn.next_reply()
    assert answer is not None
    assert answer[0] == "GREETING"
    assert conn.outstanding == 0


def test_ehlo_reply_sets_extensions() -> None:
    conn = greeted()
    assert conn.ehlo("client.test") == b"EHLO client.test\r\n"
    conn.receive_data(b"250-mx.example.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n")
    answer = conn.next_reply()
    assert answer is not None
    assert answer[0] == "EHLO"
    assert "PIPELINING" in conn.extensions
    assert conn.extensions.size_limit == 100


def test_helo_and_a_refused_ehlo_leave_no_extensions() -> None:
    conn = greeted()
    conn.ehlo("client.test")
    conn.receive_data(b"502 5.5.1 no EHLO here\r\n")
    assert conn.next_reply() == ("EHLO", Reply(502, ("no EHLO here",), "5.5.1"))
    assert conn.extensions.keywords == {}
    assert conn.helo("client.test") == b"HELO client.test\r\n"
    conn.receive_data(b"250 mx.example.test\r\n")
    assert conn.next_reply() == ("HELO", Reply(250, ("mx.example.test",)))
    assert conn.extensions.keywords == {}


def test_command_bytes() -> None:
    conn = greeted()
    assert conn.mail("a@b.test") == b"MAIL FROM:<a@b.test>\r\n"
    assert conn.mail("") == b"MAIL FROM:<>\r\n"  # the null reverse-path (bounces)
    assert (
        conn.mail("a@b.test", {"SIZE": "1234", "BODY": "8BITMIME", "SMTPUTF8": None})
        == b"MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n"
    )
    assert conn.rcpt("c@d.test") == b"RCPT TO:<c@d.test>\r\n"
    assert conn.rcpt("c@d.test", {"NOTIFY": "NEVER"}) == b"RCPT TO:<c@d.test> NOTIFY=NEVER\r\n"
    assert conn.data() == b"DATA\r\n"
    assert conn.rset() == b"RSET\r\n"
    assert conn.noop() == b"NOOP\r\n"
    assert conn.starttls() == b"STARTTLS\r\n"
    assert conn.auth("PLAIN", "AGEAYg==") == b"AUTH PLAIN AGEAYg==\r\n"
    assert conn.auth("LOGIN") == b"AUTH LOGIN\r\n"
    assert conn.auth_continue("*") == b"*\r\n"
    assert conn.verb("VRFY bob") == b"VRFY bob\r\n"
    assert conn.quit() == b"QUIT\r\n"
    assert conn.outstanding == 14


@pytest.mark.parametrize(
    "bad", ["a b@c.test", "<a@b.test>", "a@b.test>", "a@b.test\r\nRSET", "a@b\n.test"]
)
def test_bad_paths_are_refused(bad: str) -> None:
    conn = greeted()
    with pytest.raises(ValueError):  # noqa: PT011
        conn.mail(bad)
    with pytest.raises(ValueError):  # noqa: PT011
        conn.rcpt(bad)
    assert conn.outstanding == 0  # nothing was queued for a command never sent


def test_no_command_injection_through_a_quoted_local_part() -> None:
    conn = greeted()
    with pytest.raises(ValueError, match="line break"):
        conn.rcpt('"x\r\nRSET"@d.test')


def test_null_recipient_and_bad_helo_name_are_refused() -> None:
    conn = greeted()
    with pytest.raises(ValueError, match="null path"):
        conn.rcpt("")
    with pytest.raises(ValueError, match="HELO"):
        conn.ehlo("two words")
    with pytest.raises(ValueError, match="HELO"):
        conn.helo("")


def test_pipelined_replies_are_matched_to_commands_in_order() -> None:
    conn = greeted()
    batch = conn.mail("a@b.test") + conn.rcpt("c@d.test") + conn.rcpt("e@f.test") + conn.data()
    assert batch == (
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n"
    )
    assert conn.outstanding == 4
    conn.receive_data(b"250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n250 2.1.5 Ok\r\n354 go\r\n")
    answers = []
    while (answer := conn.next_reply()) is not None:
        answers.append((answer[0], answer[1].code))
    assert answers == [("MAIL", 250), ("RCPT", 550), ("RCPT", 250), ("DATA", 354)]
    assert conn.outstanding == 0


def test_a_reply_nobody_asked_for_is_an_error() -> None:
    conn = greeted()
    conn.receive_data(b"250 surprise\r\n")
    with pytest.raises(RuntimeError, match="no command outstanding"):
        conn.next_reply()


def test_garbage_reply_raises_reply_error() -> None:
    conn = greeted()
    conn.noop()
    conn.receive_data(b"+OK this is POP3\r\n")
    with pytest.raises(ReplyError):
        conn.next_reply()


def test_message_is_dot_stuffed_and_terminated() -> None:
    conn = greeted()
    assert conn.message(b".hidden\nline") == b"..hidden\r\nline\r\n.\r\n"
    assert conn.outstanding == 1


def test_bdat_chunks_are_sent_as_is_with_exact_sizes() -> None:
    conn = greeted()
    assert conn.bdat(b".a\r\nb", last=False) == b"BDAT 5\r\n.a\r\nb"
    assert conn.bdat(b"", last=True) == b"BDAT 0 LAST\r\n"
    assert conn.outstanding == 2


def test_quit_reply_closes_and_nothing_is_sent_after() -> None:
    conn = greeted()
    conn.quit()
    conn.receive_data(b"221 2.0.0 Bye\r\n")
    assert conn.next_reply() == ("QUIT", Reply(221, ("Bye",), "2.0.0"))
    assert conn.closed
    with pytest.raises(RuntimeError, match="closed"):
        conn.noop()


def test_nothing_can_be_sent_once_quit_is_sent() -> None:
    conn = greeted()
    conn.quit()
    with pytest.raises(RuntimeError):
        conn.noop()


def test_421_closes_the_session() -> None:
    conn = greeted()
    conn.mail("a@b.test")
    conn.receive_data(b"421 4.3.2 shutting down\r\n")
    answer = conn.next_reply()
    assert answer is not None
    assert answer[1].code == 421
    assert conn.closed
    with pytest.raises(RuntimeError):
        conn.rset()


def test_a_421_greeting_closes_the_session() -> None:
    conn = ClientConnection()
    conn.receive_data(b"421 4.7.0 too busy\r\n")
    assert conn.next_reply() is not None
    assert conn.closed


def test_tls_started_forgets_extensions_and_bytes_sent_before_the_handshake() -> None:
    conn = greeted()
    conn.ehlo("client.test")
    conn.receive_data(b"250-mx.example.test\r\n250 STARTTLS\r\n")
    assert conn.next_reply() is not None
    assert "STARTTLS" in conn.extensions
    conn.starttls()
    # A man in the middle appends a reply after 220: it must not survive the handshake.
    conn.receive_data(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n")
    answer = conn.next_reply()
    assert answer is not None
    assert answer[0] == "STARTTLS"
    conn.tls_started()
    assert conn.extensions.keywords == {}
    conn.ehlo("client.test")
    assert conn.next_reply() is None  # the injected 250 is gone
    conn.receive_data(b"250-mx.example.test\r\n250 AUTH PLAIN\r\n")
    answer = conn.next_reply()
    assert answer is not None
    assert answer[0] == "EHLO"
    assert conn.extensions.auth_mechanisms == ("PLAIN",)


# -- a client core against a server core, no sockets ------------------------------------------


class Pair:
    """A ClientConnection and a ServerConnection (through the test Driver) wired together."""

    def __init__(self, driver: Driver | None = None) -> None:
        self.client = ClientConnection()
        self.driver = driver or Driver()
        self.writes: list[bytes] = []
        self.client.receive_data(self.driver.greeting())

    def send(self, data: bytes) -> None:
        self.writes.append(data)
        self.client.receive_data(self.driver.feed(data))

    def replies(self) -> list[tuple[str, Reply]]:
        out = []
        while (answer := self.client.next_reply()) is not None:
            out.append(answer)
        return out


def test_whole_pipelined_transaction_against_the_server_core() -> None:
    pair = Pair()
    ((command, greeting),) = pair.replies()
    assert (command, greeting.code) == ("GREETING", 220)
    pair.send(pair.client.ehlo("client.test"))
    ((command, _),) = pair.replies()
    assert command == "EHLO"
    ext = pair.client.extensions
    assert "PIPELINING" in ext
    assert "8BITMIME" in ext
    message = b"Subject: test\r\n\r\n.leading dot\r\nline\r\n"
    # MAIL, both RCPTs and DATA in one write, as RFC 2920 allows.
    pair.send(
        pair.client.mail("alice@example.test", {"SIZE": str(len(message))})
        + pair.client.rcpt("bob@example.test")
        + pair.client.rcpt("carol@example.test")
        + pair.client.data()
    )
    answers = pair.replies()
    assert [(c, r.code) for c, r in answers] == [
        ("MAIL", 250),
        ("RCPT", 250),
        ("RCPT", 250),
        ("DATA", 354),
    ]
    pair.send(pair.client.message(message))
    ((command, final),) = pair.replies()
    assert command == "MESSAGE"
    assert final.code == 250
    assert final.status == "2.0.0"
    assert "queued as" in final.text
    pair.send(pair.client.quit())
    ((command, bye),) = pair.replies()
    assert (command, bye.code) == ("QUIT", 221)
    assert pair.client.closed
    assert pair.driver.conn.closed

    events = pair.driver.events
    assert kinds(events)[:5] == ["Hello", "MailFrom", "RcptTo", "RcptTo", "DataCommand"]
    hello = events[0]
    assert isinstance(hello, Hello)
    assert hello.extended
    mail = events[1]
    assert isinstance(mail, MailFrom)
    assert mail.parameters == {"SIZE": str(len(message))}
    assert [str(e.recipient) for e in events if isinstance(e, RcptTo)] == [
        "bob@example.test",
        "carol@example.test",
    ]
    assert pair.driver.message_text() == message
    assert any(isinstance(e, MessageEnd) for e in events)


def test_refused_recipient_in_a_pipelined_batch_keeps_the_others() -> None:
    def policy(event: object) -> Reply | None:
        if isinstance(event, RcptTo) and event.recipient.local_part == "nobody":
            return catalogue.no_such_user(str(event.recipient))
        return None

    pair = Pair(Driver(policy=policy))
    pair.replies()
    pair.send(pair.client.ehlo("client.test"))
    pair.replies()
    pair.send(
        pair.client.mail("a@remote.test")
        + pair.client.rcpt("nobody@example.test")
        + pair.client.rcpt("bob@example.test")
        + pair.client.data()
    )
    codes = [(c, r.code, r.status) for c, r in pair.replies()]
    assert codes == [
        ("MAIL", 250, "2.1.0"),
        ("RCPT", 550, "5.1.1"),
        ("RCPT", 250, "2.1.5"),
        ("DATA", 354, None),
    ]
    pair.send(pair.client.message(b"Subject: x\r\n\r\nbody\r\n"))
    ((_, final),) = pair.replies()
    assert final.code == 250


def test_all_recipients_refused_then_data_refused_then_rset_and_a_second_transaction() -> None:
    def policy(event: object) -> Reply | None:
        if isinstance(event, RcptTo) and event.recipient.domain == "elsewhere.test":
            return catalogue.relay_denied(str(event.recipient))
        return None

    pair = Pair(Driver(policy=policy))
    pair.replies()
    pair.send(pair.client.ehlo("client.test"))
    pair.replies()
    pair.send(
        pair.client.mail("a@b.test") + pair.client.rcpt("x@elsewhere.test") + pair.client.data()
    )
    assert [r.code for _, r in pair.replies()] == [250, 550, 554]
    pair.send(pair.client.rset())
    assert [(c, r.code) for c, r in pair.replies()] == [("RSET", 250)]
    pair.send(
        pair.client.mail("a@b.test") + pair.client.rcpt("bob@example.test") + pair.client.data()
    )
    assert [r.code for _, r in pair.replies()] == [250, 250, 354]
    pair.send(pair.client.message(b""))
    ((_, final),) = pair.replies()
    assert final.code == 250
    assert sum(isinstance(e, DataCommand) for e in pair.driver.events) == 1
    assert b"".join(e.data for e in pair.driver.events if isinstance(e, MessageData)) == b""
