"""Tests for pigeon.smtp.ServerConnection: commands, sequence, limits, pipelining, closing.

Everything runs through bytes in and bytes out, with the driver in tests/smtp_helpers.py
answering events; no sockets. The DATA phase has its own file (test_smtp_data.py).
"""

from __future__ import annotations

import pytest

from pigeon.smtp import (
    NEED_DATA,
    PAUSED,
    Address,
    ConnectionClosed,
    DataCommand,
    Event,
    Expand,
    Hello,
    MailFrom,
    MessageData,
    MessageEnd,
    RcptTo,
    Reply,
    Reset,
    ServerConnection,
    State,
    Turn,
    Verify,
    replies,
)
from tests.smtp_helpers import (
    CLIENT_IP,
    EXPN_REPLY,
    HOST,
    QUEUE_ID,
    TURN_REPLY,
    VRFY_REPLY,
    Driver,
    codes,
    converse,
    ehlo_session,
    first_lines,
    helo_session,
    kinds,
    replies_of,
    reply_lines,
    settings,
    transaction_session,
)

EHLO_LINES = [
    f"250-{HOST}",
    "250-PIPELINING",
    "250-SIZE 26214400",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250 HELP",
]
GREETING = f"220 {HOST} ESMTP Pigeon"
CLOSING = f"221 2.0.0 {HOST} Service closing transmission channel"
TOO_MANY_ERRORS = f"421 4.7.0 {HOST} Too many errors, closing transmission channel"


def one_line(out: bytes) -> str:
    """The output is exactly one single-line reply; return it."""
    lines = reply_lines(out)
    assert len(lines) == 1, lines
    return lines[0]


# -- greeting ---------------------------------------------------------------------------------


def test_new_connection_waits_to_greet() -> None:
    conn = ServerConnection(settings(), client_address=CLIENT_IP)
    assert conn.state is State.GREETING
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA


def test_greeting() -> None:
    conn = ServerConnection(settings(), client_address=CLIENT_IP)
    conn.start()
    assert conn.state is State.START
    assert conn.data_to_send() == f"{GREETING}\r\n".encode()
    assert conn.data_to_send() == b""


def test_greeting_banner_is_configurable() -> None:
    conn = ServerConnection(settings(banner="ESMTP ready"))
    conn.start()
    assert conn.data_to_send() == f"220 {HOST} ESMTP ready\r\n".encode()


def test_start_with_refusal_closes() -> None:
    conn = ServerConnection(settings())
    conn.start(replies.too_many_connections(HOST))
    assert conn.data_to_send() == f"421 {HOST} Too many connections, try again later\r\n".encode()
    assert conn.state is State.CLOSED
    assert conn.next_event() == ConnectionClosed()


def test_start_twice_is_a_program_error() -> None:
    conn = ServerConnection(settings())
    conn.start()
    with pytest.raises(RuntimeError):
        conn.start()


def test_early_talker_waits_for_the_greeting() -> None:
    conn = ServerConnection(settings())
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""
    conn.start()
    assert conn.next_event() is NEED_DATA
    assert reply_lines(conn.data_to_send()) == [GREETING, "250 Ok"]


# -- HELO and EHLO ----------------------------------------------------------------------------


def test_ehlo_lists_extensions() -> None:
    events, out = converse(b"EHLO client.example.test\r\n")
    assert events == [Hello("client.example.test", extended=True)]
    assert replies_of(out) == [[GREETING], EHLO_LINES]


def test_helo_reply_is_the_hostname_without_enhanced_code() -> None:
    events, out = converse(b"HELO client.example.test\r\n")
    assert events == [Hello("client.example.test", extended=False)]
    assert reply_lines(out) == [GREETING, f"250 {HOST}"]


def test_hello_sets_the_session() -> None:
    driver = ehlo_session(name="c.example.test")
    assert driver.conn.state is State.READY
    assert driver.conn.helo_name == "c.example.test"
    assert driver.conn.extended is True
    driver = helo_session(name="h.example.test")
    assert driver.conn.helo_name == "h.example.test"
    assert driver.conn.extended is False


def test_ehlo_extensions_follow_the_settings() -> None:
    driver = Driver(settings(pipelining=False, eightbitmime=False, max_message_size=0))
    driver.greeting()
    assert replies_of(driver.feed(b"EHLO c.test\r\n")) == [
        [f"250-{HOST}", "250-SIZE", "250-ENHANCEDSTATUSCODES", "250 HELP"]
    ]
    driver = Driver(settings(max_message_size=1000))
    driver.greeting()
    assert "250-SIZE 1000" in reply_lines(driver.feed(b"EHLO c.test\r\n"))


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_hello_without_domain_is_501_naming_what_is_missing(verb: str) -> None:
    for line in (f"{verb}\r\n", f"{verb} \r\n", f"{verb}    \r\n"):
        events, out = converse(line.encode())
        assert events == []
        assert reply_lines(out)[1] == f"501 Syntax: {verb} <domain>: your domain is missing"


def test_bare_helo_after_ehlo_shows_the_enhanced_code() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"HELO\r\n")) == (
        "501 5.5.4 Syntax: HELO <domain>: your domain is missing"
    )


@pytest.mark.parametrize("verb", ["HELO", "EHLO"])
def test_hello_with_two_words_is_501(verb: str) -> None:
    events, out = converse(f"{verb} client.test extra\r\n".encode())
    assert events == []
    assert reply_lines(out)[1] == f"501 Syntax: {verb} <domain>: one domain name, no spaces"


@pytest.mark.parametrize(
    "literal", ["[192.0.2]", "[300.1.1.1]", "[IPv6:zz::1]", "[192.0.2.1", "[]", "[tag:]"]
)
def test_hello_with_bad_address_literal_is_501(literal: str) -> None:
    events, out = converse(f"EHLO {literal}\r\n".encode())
    assert events == []
    assert reply_lines(out)[1] == f"501 EHLO: invalid address literal {literal}"


@pytest.mark.parametrize("name", ["[192.0.2.1]", "[IPv6:2001:db8::1]", "[IPv6:::1]"])
def test_hello_with_address_literal(name: str) -> None:
    events, _ = converse(f"EHLO {name}\r\n".encode())
    assert events == [Hello(name, extended=True)]


@pytest.mark.parametrize("name", ["my_host", "localhost", "x", "under_score.example.test"])
def test_hello_takes_any_other_single_token(name: str) -> None:
    # As Postfix does by default: a HELO name is a claim, not checked against Domain.
    events, _ = converse(f"HELO {name}\r\n".encode())
    assert events == [Hello(name, extended=False)]


def test_hello_surrounding_spaces_are_stripped() -> None:
    events, _ = converse(b"EHLO   client.test  \r\n")
    assert events == [Hello("client.test", extended=True)]


def test_refused_hello_leaves_the_session_unintroduced() -> None:
    driver = Driver(policy={Hello: Reply.of(550, "No thanks", "5.7.1")})
    driver.greeting()
    assert one_line(driver.feed(b"EHLO c.test\r\n")) == "550 No thanks"
    assert driver.conn.state is State.START
    assert one_line(driver.feed(b"MAIL FROM:<a@b.test>\r\n")) == "503 Send HELO/EHLO first"


def test_ehlo_mid_transaction_drops_the_transaction() -> None:
    driver = transaction_session()
    out = driver.feed(b"EHLO again.test\r\nRCPT TO:<c@d.test>\r\n")
    assert Hello("again.test", extended=True) in driver.events
    assert replies_of(out)[-1] == ["503 5.5.1 Need MAIL command before RCPT"]
    assert driver.conn.state is State.READY


# -- verbs ------------------------------------------------------------------------------------


def test_verbs_are_case_insensitive() -> None:
    events, out = converse(
        b"eHlO c.test\r\n"
        b"mail from:<a@b.test>\r\n"
        b"Rcpt To:<c@d.test>\r\n"
        b"data\r\n"
        b"hello\r\n.\r\n"
        b"nOoP\r\n"
        b"rset\r\n"
        b"HeLp\r\n"
        b"vrfy bob\r\n"
        b"quit\r\n"
    )
    assert kinds(events) == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "DataCommand",
        "MessageData",
        "MessageEnd",
        "Verify",
        "ConnectionClosed",
    ]
    assert codes(out) == [220, 250, 250, 250, 354, 250, 250, 250, 214, 252, 221]


@pytest.mark.parametrize("verb", ["STARTTLS", "AUTH PLAIN AGFiAGM=", "BDAT 10 LAST", "ETRN x"])
def test_commands_not_offered_are_502(verb: str) -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(f"{verb}\r\n".encode())) == "502 5.5.1 Command not implemented"
    assert driver.events == []


@pytest.mark.parametrize("line", ["FOO", "MAILFROM:<a@b.test>", "HELLO x", "X" * 100, " NOOP"])
def test_unknown_verb_is_500(line: str) -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(f"{line}\r\n".encode())) == (
        "500 5.5.2 Syntax error, command unrecognized"
    )


def test_empty_line_is_500() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"\r\n")) == "500 5.5.2 Syntax error, command unrecognized"
    assert one_line(driver.feed(b"NOOP\r\n")) == "250 2.0.0 Ok"


def test_noop_with_an_argument_is_250() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"NOOP anything at all\r\n")) == "250 2.0.0 Ok"
    assert driver.events == []


def test_noop_before_helo() -> None:
    _, out = converse(b"NOOP\r\n")
    assert reply_lines(out) == [GREETING, "250 Ok"]


@pytest.mark.parametrize("verb", ["RSET", "QUIT", "TURN"])
def test_commands_without_arguments_refuse_one(verb: str) -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(f"{verb} now\r\n".encode())) == (
        f"501 5.5.4 Syntax: {verb} takes no argument"
    )
    assert driver.events == []
    assert driver.conn.state is State.READY


def test_data_with_an_argument_is_501() -> None:
    driver = transaction_session()
    assert one_line(driver.feed(b"DATA please\r\n")) == "501 5.5.4 Syntax: DATA takes no argument"
    assert driver.conn.state is State.RCPT
    assert driver.events == []


def test_trailing_space_after_a_verb_is_not_an_argument() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"RSET \r\n")) == "250 2.0.0 Ok"


# -- HELP -------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    driver = ehlo_session()
    assert replies_of(driver.feed(b"HELP\r\n")) == [
        [
            "214-2.0.0 Pigeon SMTP server; commands:",
            "214-2.0.0 HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN SEND SOML SAML TURN",
            "214-2.0.0 HELP <command> explains one. Mail for the postmaster: RCPT TO:<postmaster>",
            "214 2.0.0 End of HELP info",
        ]
    ]
    assert driver.events == []


@pytest.mark.parametrize("topic", ["mail", "MAIL", "Mail", " mail "])
def test_help_on_one_command(topic: str) -> None:
    driver = ehlo_session()
    assert replies_of(driver.feed(f"HELP {topic}\r\n".encode())) == [
        [
            "214-2.0.0 MAIL FROM:<sender> [SIZE=<octets>] [BODY=7BIT|8BITMIME]",
            "214-2.0.0 Start a mail transaction; <> is the null sender of bounces.",
            "214 2.0.0 End of HELP info",
        ]
    ]


def test_help_before_helo_has_no_enhanced_codes() -> None:
    _, out = converse(b"HELP TURN\r\n")
    assert replies_of(out)[1] == [
        "214-TURN",
        "214-Reverse the roles of client and server (RFC 821).",
        "214 End of HELP info",
    ]


def test_help_unknown_topic_is_504() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"HELP frobnicate\r\n")) == (
        "504 5.5.4 HELP: no such command FROBNICATE; try HELP"
    )


def test_help_during_a_transaction_keeps_it() -> None:
    driver = transaction_session()
    driver.feed(b"HELP RCPT\r\n")
    assert driver.conn.state is State.RCPT


# -- VRFY, EXPN -------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["VRFY", "EXPN"])
def test_vrfy_expn_without_argument_is_501(verb: str) -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(f"{verb}\r\n".encode())) == f"501 5.5.4 Syntax: {verb} <address>"
    assert one_line(driver.feed(f"{verb}   \r\n".encode())) == f"501 5.5.4 Syntax: {verb} <address>"
    assert driver.events == []


def test_vrfy_and_expn_are_events_the_program_answers() -> None:
    driver = ehlo_session()
    out = driver.feed(b"VRFY  Bob Smith \r\nEXPN staff\r\n")
    assert driver.events == [Verify("Bob Smith"), Expand("staff")]
    assert out == VRFY_REPLY.to_bytes(enhanced=True) + EXPN_REPLY.to_bytes(enhanced=True)


def test_vrfy_before_helo_is_allowed() -> None:
    # RFC 5321 4.1.4: VRFY, EXPN, NOOP, HELP and RSET may be sent at any time.
    events, out = converse(b"VRFY postmaster\r\n")
    assert events == [Verify("postmaster")]
    assert codes(out) == [220, 252]


def test_vrfy_has_no_standard_positive_reply() -> None:
    conn = ServerConnection(settings())
    conn.start()
    conn.receive_data(b"VRFY bob\r\n")
    assert conn.next_event() == Verify("bob")
    with pytest.raises(RuntimeError):
        conn.accept()


# -- MAIL and RCPT paths -----------------------------------------------------------------------


def mail_event(line: str) -> tuple[list[Event], str]:
    driver = ehlo_session()
    out = driver.feed(f"{line}\r\n".encode())
    return driver.events, one_line(out)


def rcpt_event(line: str) -> tuple[list[Event], str]:
    driver = ehlo_session()
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    driver.events.clear()
    out = driver.feed(f"{line}\r\n".encode())
    return driver.events, one_line(out)


def test_mail_and_rcpt_accepted() -> None:
    driver = ehlo_session()
    out = driver.feed(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert driver.events == [
        MailFrom(Address("alice", "example.test"), {}, raw="<alice@example.test>"),
        RcptTo(Address("bob", "example.test"), {}, raw="<bob@example.test>"),
    ]
    assert reply_lines(out) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert driver.conn.state is State.RCPT


@pytest.mark.parametrize(
    ("path", "address"),
    [
        ('<"john doe"@example.test>', Address("john doe", "example.test")),
        ('<"a\\"b\\\\c"@example.test>', Address('a"b\\c', "example.test")),
        ("<u@[192.0.2.1]>", Address("u", "[192.0.2.1]")),
        ("<u@[IPv6:2001:db8::1]>", Address("u", "[IPv6:2001:db8::1]")),
        ("<u@[x-tag:abc]>", Address("u", "[x-tag:abc]")),
    ],
)
def test_mail_and_rcpt_take_quoted_locals_and_literals(path: str, address: Address) -> None:
    events, reply = mail_event(f"MAIL FROM:{path}")
    assert events == [MailFrom(address, {}, raw=path)]
    assert reply == "250 2.1.0 Ok"
    events, reply = rcpt_event(f"RCPT TO:{path}")
    assert events == [RcptTo(address, {}, raw=path)]
    assert reply == "250 2.1.5 Ok"


def test_null_reverse_path() -> None:
    events, reply = mail_event("MAIL FROM:<>")
    assert events == [MailFrom(None, {}, raw="<>")]
    assert reply == "250 2.1.0 Ok"


def test_null_forward_path_is_553() -> None:
    events, reply = rcpt_event("RCPT TO:<>")
    assert events == []
    assert reply == "553 5.1.3 Bad recipient address syntax"


@pytest.mark.parametrize("path", ["<postmaster>", "<Postmaster>", "<POSTMASTER>", "<PostMaster>"])
def test_rcpt_postmaster_any_case(path: str) -> None:
    events, reply = rcpt_event(f"RCPT TO:{path}")
    assert events == [RcptTo(Address(path[1:-1], ""), {}, raw=path)]
    assert isinstance(events[0], RcptTo)
    assert events[0].recipient.is_postmaster
    assert reply == "250 2.1.5 Ok"


def test_source_route_is_kept_and_the_mailbox_used() -> None:
    events, _ = rcpt_event("RCPT TO:<@a.test,@b.test:user@c.test>")
    assert events == [
        RcptTo(
            Address("user", "c.test"),
            {},
            raw="<@a.test,@b.test:user@c.test>",
            route=("a.test", "b.test"),
        )
    ]
    events, _ = mail_event("MAIL FROM:<@relay.test:user@c.test>")
    assert events == [MailFrom(Address("user", "c.test"), {}, raw="<@relay.test:user@c.test>")]


def test_space_after_colon_is_accepted() -> None:
    events, _ = mail_event("MAIL FROM: <a@b.test>")
    assert events == [MailFrom(Address("a", "b.test"), {}, raw="<a@b.test>")]
    events, _ = rcpt_event("RCPT TO: <c@d.test>")
    assert events == [RcptTo(Address("c", "d.test"), {}, raw="<c@d.test>")]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("MAIL FROM:a@b.test", "501 5.5.4 Syntax: MAIL FROM:<address>: the address must be in <>"),
        ("MAIL FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>: the address must be in <>"),
        ("MAIL", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL TO:<a@b.test>", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM<a@b.test>", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM:<a@b.test", "501 5.5.4 Syntax: MAIL FROM:<address>: missing '>'"),
        (
            "MAIL FROM:<(Ralph Martin)>",
            "501 5.5.4 Syntax: comments are not allowed in a path (RFC 5321 4.1.2)",
        ),
        (
            "MAIL FROM:<a(x)@b.test>",
            "501 5.5.4 Syntax: comments are not allowed in a path (RFC 5321 4.1.2)",
        ),
        ("MAIL FROM:<a@b.test>junk", "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"),
        ("MAIL FROM:<a..b@c.test>", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<user>", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<a@[999.0.0.1]>", "553 5.1.7 Bad sender address syntax"),
        ("MAIL FROM:<postmaster>", "553 5.1.7 Bad sender address syntax"),
    ],
)
def test_mail_path_errors(line: str, reply: str) -> None:
    events, got = mail_event(line)
    assert events == []
    assert got == reply


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("RCPT TO:c@d.test", "501 5.5.4 Syntax: RCPT TO:<address>: the address must be in <>"),
        ("RCPT FROM:<c@d.test>", "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"),
        (
            "RCPT TO:<(Dave)c@d.test>",
            "501 5.5.4 Syntax: comments are not allowed in a path (RFC 5321 4.1.2)",
        ),
        ("RCPT TO:<c@-d.test>", "553 5.1.3 Bad recipient address syntax"),
        ("RCPT TO:<bob>", "553 5.1.3 Bad recipient address syntax"),
        ("RCPT TO:<@a.test:>", "553 5.1.3 Bad recipient address syntax"),
    ],
)
def test_rcpt_path_errors(line: str, reply: str) -> None:
    events, got = rcpt_event(line)
    assert events == []
    assert got == reply


def test_path_over_256_octets_is_501() -> None:
    domain = ".".join(["d" * 60] * 4)
    fits = "<" + "l" * (256 - 3 - len(domain)) + "@" + domain + ">"
    too_long = "<" + "l" * (257 - 3 - len(domain)) + "@" + domain + ">"
    assert (len(fits), len(too_long)) == (256, 257)
    assert mail_event(f"MAIL FROM:{fits}")[1] == "250 2.1.0 Ok"
    assert mail_event(f"MAIL FROM:{too_long}") == (
        [],
        "501 5.5.4 Path too long (RFC 5321 4.5.3.1.3)",
    )
    assert rcpt_event(f"RCPT TO:{too_long}") == ([], "501 5.5.4 Path too long (RFC 5321 4.5.3.1.3)")


# -- ESMTP parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "parsed"),
    [
        ("SIZE=1000", {"SIZE": "1000"}),
        ("size=0", {"SIZE": "0"}),
        ("SIZE=26214400", {"SIZE": "26214400"}),
        ("BODY=7BIT", {"BODY": "7BIT"}),
        ("body=8bitmime", {"BODY": "8BITMIME"}),
        ("BODY=8BITMIME SIZE=12", {"BODY": "8BITMIME", "SIZE": "12"}),
    ],
)
def test_mail_parameters_accepted(params: str, parsed: dict[str, str | None]) -> None:
    events, reply = mail_event(f"MAIL FROM:<a@b.test> {params}")
    assert events == [MailFrom(Address("a", "b.test"), parsed, raw="<a@b.test>")]
    assert reply == "250 2.1.0 Ok"


@pytest.mark.parametrize(
    ("params", "reply"),
    [
        ("SIZE=26214401", "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("SIZE=99999999999999999999", "552 5.3.4 Message size exceeds fixed maximum message size"),
        ("SIZE=999999999999999999999", "501 5.5.4 SIZE takes a number of octets"),  # 21 digits
        ("SIZE=abc", "501 5.5.4 SIZE takes a number of octets"),
        ("SIZE=-1", "501 5.5.4 SIZE takes a number of octets"),
        ("SIZE", "501 5.5.4 SIZE takes a number of octets"),
        ("BODY=BINARYMIME", "504 5.5.4 BODY=BINARYMIME needs CHUNKING, which is not offered"),
        ("BODY=binarymime", "504 5.5.4 BODY=BINARYMIME needs CHUNKING, which is not offered"),
        ("BODY=9BIT", "501 5.5.4 BODY takes 7BIT or 8BITMIME"),
        ("BODY", "501 5.5.4 BODY takes 7BIT or 8BITMIME"),
        ("AUTH=<>", "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"),
        ("SMTPUTF8", "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"),
        ("X-UNKNOWN=1", "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"),
        ("SIZE=1 SIZE=2", "501 5.5.4 Parameter SIZE given twice"),
        ("SIZE=1 size=1", "501 5.5.4 Parameter SIZE given twice"),
        ("SIZE==1", "501 5.5.4 Bad parameter syntax: SIZE==1"),
    ],
)
def test_mail_parameter_errors(params: str, reply: str) -> None:
    assert mail_event(f"MAIL FROM:<a@b.test> {params}") == ([], reply)


def test_size_limit_off_accepts_any_size() -> None:
    driver = ehlo_session(Driver(settings(max_message_size=0)))
    driver.feed(b"MAIL FROM:<a@b.test> SIZE=99999999999999999999\r\n")
    assert driver.events == [
        MailFrom(Address("a", "b.test"), {"SIZE": "99999999999999999999"}, raw="<a@b.test>")
    ]


def test_body_is_unknown_without_8bitmime() -> None:
    driver = ehlo_session(Driver(settings(eightbitmime=False)))
    assert one_line(driver.feed(b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n")) == (
        "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized"
    )


def test_rcpt_parameters_are_not_recognized() -> None:
    assert rcpt_event("RCPT TO:<c@d.test> NOTIFY=NEVER") == (
        [],
        "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized",
    )


def test_parameters_after_helo_are_555() -> None:
    driver = helo_session()
    assert one_line(driver.feed(b"MAIL FROM:<a@b.test> SIZE=10\r\n")) == (
        "555 MAIL/RCPT parameters need an EHLO session"
    )
    assert one_line(driver.feed(b"MAIL FROM:<a@b.test>\r\n")) == "250 Ok"
    assert one_line(driver.feed(b"RCPT TO:<c@d.test> X=1\r\n")) == (
        "555 MAIL/RCPT parameters need an EHLO session"
    )


def test_trailing_space_after_path_is_no_parameter() -> None:
    events, reply = mail_event("MAIL FROM:<a@b.test>   ")
    assert events == [MailFrom(Address("a", "b.test"), {}, raw="<a@b.test>")]
    assert reply == "250 2.1.0 Ok"


# -- sequence ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("MAIL FROM:<a@b.test>", "503 Send HELO/EHLO first"),
        ("SEND FROM:<a@b.test>", "503 Send HELO/EHLO first"),
        ("RCPT TO:<a@b.test>", "503 Send HELO/EHLO first"),
        ("DATA", "503 Send HELO/EHLO first"),
        ("TURN", "503 Send HELO/EHLO first"),
    ],
)
def test_before_helo(line: str, reply: str) -> None:
    events, out = converse(f"{line}\r\n".encode())
    assert events == []
    assert reply_lines(out) == [GREETING, reply]


def test_nested_mail_is_503() -> None:
    driver = ehlo_session()
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    for verb in ("MAIL", "SEND", "SOML", "SAML"):
        assert one_line(driver.feed(f"{verb} FROM:<c@d.test>\r\n".encode())) == (
            "503 5.5.1 Nested MAIL command"
        )
    driver.feed(b"RCPT TO:<c@d.test>\r\n")
    assert one_line(driver.feed(b"MAIL FROM:<c@d.test>\r\n")) == "503 5.5.1 Nested MAIL command"
    assert kinds(driver.events) == ["MailFrom", "RcptTo"]


def test_rcpt_before_mail_is_503() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"RCPT TO:<c@d.test>\r\n")) == (
        "503 5.5.1 Need MAIL command before RCPT"
    )


def test_data_before_mail_is_503() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"DATA\r\n")) == "503 5.5.1 Need MAIL command before DATA"


def test_data_before_rcpt_is_503() -> None:
    driver = ehlo_session()
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert one_line(driver.feed(b"DATA\r\n")) == "503 5.5.1 Need RCPT command before DATA"


def test_data_after_every_rcpt_was_refused_is_554() -> None:
    driver = ehlo_session(Driver(policy={RcptTo: replies.no_such_user("x@example.test")}))
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n")
    assert reply_lines(out) == [
        "250 2.1.0 Ok",
        "550 5.1.1 <x@example.test>: Recipient address rejected: User unknown",
        "554 5.5.1 No valid recipients",
    ]
    assert kinds(driver.events) == ["MailFrom", "RcptTo"]


def test_data_with_one_of_two_recipients_accepted() -> None:
    def policy(event: Event) -> Reply | None:
        if isinstance(event, RcptTo) and event.recipient.local_part == "nobody":
            return replies.no_such_user("nobody@example.test")
        return None

    driver = ehlo_session(Driver(policy=policy))
    out = driver.feed(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<bob@example.test>\r\nDATA\r\n"
    )
    assert codes(out) == [250, 550, 250, 354]
    assert driver.conn.state is State.DATA


def test_refused_mail_leaves_no_transaction() -> None:
    driver = ehlo_session(Driver(policy={MailFrom: Reply.of(550, "Sender refused", "5.7.1")}))
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert reply_lines(out) == [
        "550 5.7.1 Sender refused",
        "503 5.5.1 Need MAIL command before RCPT",
    ]
    assert driver.conn.state is State.READY


def test_refused_data_keeps_the_transaction() -> None:
    driver = transaction_session(Driver(policy={DataCommand: replies.LOCAL_ERROR}))
    out = driver.feed(b"DATA\r\n")
    assert one_line(out) == "451 4.3.0 Local error in processing; message not accepted, try again"
    assert driver.conn.state is State.RCPT


# -- RSET -------------------------------------------------------------------------------------


def test_rset_mid_transaction() -> None:
    driver = transaction_session()
    out = driver.feed(b"RSET\r\n")
    assert driver.events == [Reset()]
    assert one_line(out) == "250 2.0.0 Ok"
    assert driver.conn.state is State.READY
    assert one_line(driver.feed(b"RCPT TO:<c@d.test>\r\n")) == (
        "503 5.5.1 Need MAIL command before RCPT"
    )
    assert one_line(driver.feed(b"MAIL FROM:<a@b.test>\r\n")) == "250 2.1.0 Ok"


def test_rset_after_mail_only() -> None:
    driver = ehlo_session()
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    driver.events.clear()
    assert one_line(driver.feed(b"RSET\r\n")) == "250 2.0.0 Ok"
    assert driver.events == [Reset()]


def test_rset_without_transaction_gives_no_event() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"RSET\r\n")) == "250 2.0.0 Ok"
    assert driver.events == []
    assert driver.conn.state is State.READY


def test_rset_before_helo_stays_unintroduced() -> None:
    events, out = converse(b"RSET\r\nMAIL FROM:<a@b.test>\r\n")
    assert events == []
    assert reply_lines(out) == [GREETING, "250 Ok", "503 Send HELO/EHLO first"]


def test_rset_forgets_refused_recipients() -> None:
    driver = ehlo_session(Driver(policy={RcptTo: replies.no_such_user("x@y.test")}))
    driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\n")
    assert one_line(driver.feed(b"DATA\r\n")) == "503 5.5.1 Need RCPT command before DATA"


# -- SEND, SOML, SAML, TURN (RFC 821) ----------------------------------------------------------


@pytest.mark.parametrize("verb", ["SEND", "SOML", "SAML"])
def test_classic_transaction_verbs_are_mail_events(verb: str) -> None:
    driver = ehlo_session()
    out = driver.feed(f"{verb.lower()} from:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n".encode())
    assert driver.events == [
        MailFrom(Address("a", "b.test"), {}, verb=verb, raw="<a@b.test>"),  # type: ignore[arg-type]
        RcptTo(Address("c", "d.test"), {}, raw="<c@d.test>"),
    ]
    assert reply_lines(out) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]


def test_classic_transaction_verb_refused_by_the_program() -> None:
    def policy(event: Event) -> Reply | None:
        if isinstance(event, MailFrom) and event.verb != "MAIL":
            return replies.NOT_IMPLEMENTED
        return None

    driver = ehlo_session(Driver(policy=policy))
    assert one_line(driver.feed(b"SAML FROM:<a@b.test>\r\n")) == "502 5.5.1 Command not implemented"
    assert driver.conn.state is State.READY


def test_turn_is_an_event_the_program_answers() -> None:
    driver = ehlo_session()
    out = driver.feed(b"TURN\r\n")
    assert driver.events == [Turn()]
    assert out == TURN_REPLY.to_bytes(enhanced=True)
    assert driver.conn.state is State.READY


def test_turn_mid_transaction_is_out_of_sequence() -> None:
    driver = transaction_session()
    assert one_line(driver.feed(b"TURN\r\n")) == "503 5.5.1 Nested MAIL command"
    assert driver.events == []


def test_turn_has_no_standard_positive_reply() -> None:
    driver = ehlo_session()
    driver.conn.receive_data(b"TURN\r\n")
    assert driver.conn.next_event() == Turn()
    with pytest.raises(RuntimeError, match="Turn"):
        driver.conn.accept()


# -- recipient limit --------------------------------------------------------------------------


def test_a_thousand_recipients_and_the_next_is_452() -> None:
    driver = ehlo_session()
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    batch = b"".join(b"RCPT TO:<user%d@example.test>\r\n" % n for n in range(1000))
    out = driver.feed(batch)
    assert reply_lines(out) == ["250 2.1.5 Ok"] * 1000
    assert one_line(driver.feed(b"RCPT TO:<one.more@example.test>\r\n")) == (
        "452 4.5.3 Too many recipients"
    )
    assert sum(isinstance(e, RcptTo) for e in driver.events) == 1000
    # The transaction is still good: DATA proceeds with the thousand.
    assert one_line(driver.feed(b"DATA\r\n")) == "354 End data with <CR><LF>.<CR><LF>"


def test_recipient_limit_counts_accepted_recipients_only() -> None:
    def policy(event: Event) -> Reply | None:
        if isinstance(event, RcptTo) and event.recipient.local_part.startswith("no"):
            return Reply.of(450, "Try later", "4.2.1")
        return None

    driver = ehlo_session(Driver(settings(max_recipients=2), policy=policy))
    out = driver.feed(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<no1@x.test>\r\nRCPT TO:<a1@x.test>\r\n"
        b"RCPT TO:<no2@x.test>\r\nRCPT TO:<a2@x.test>\r\nRCPT TO:<a3@x.test>\r\n"
    )
    assert codes(out) == [250, 450, 250, 450, 250, 452]


def test_recipient_limit_resets_with_the_transaction() -> None:
    driver = ehlo_session(Driver(settings(max_recipients=1)))
    out = driver.feed(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nRSET\r\n"
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<e@f.test>\r\n"
    )
    assert codes(out) == [250, 250, 452, 250, 250, 250]


# -- command line limits ----------------------------------------------------------------------


def test_command_line_of_512_octets_is_accepted() -> None:
    driver = ehlo_session()
    line = b"NOOP " + b"x" * 505 + b"\r\n"
    assert len(line) == 512
    assert one_line(driver.feed(line)) == "250 2.0.0 Ok"


def test_command_line_of_513_octets_is_500_and_the_session_continues() -> None:
    driver = ehlo_session()
    line = b"NOOP " + b"x" * 506 + b"\r\n"
    assert len(line) == 513
    out = driver.feed(line + b"NOOP\r\n")
    assert reply_lines(out) == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]
    assert driver.conn.state is State.READY


def test_long_mail_command_is_not_half_processed() -> None:
    driver = ehlo_session()
    out = driver.feed(b"MAIL FROM:<" + b"a" * 600 + b"@b.test>\r\nMAIL FROM:<a@b.test>\r\n")
    assert reply_lines(out) == ["500 5.5.2 Line too long", "250 2.1.0 Ok"]
    assert kinds(driver.events) == ["MailFrom"]


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 511, 512, 513])
def test_long_line_across_many_receive_data_calls(chunk_size: int) -> None:
    driver = ehlo_session()
    data = b"NOOP " + b"y" * 3000 + b"\r\nNOOP\r\n"
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    out = driver.feed_chunks(chunks)
    assert reply_lines(out) == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]
    # The core does not hoard the long line while it waits for its end.
    driver.feed(b"NOOP " + b"z" * 5000)
    assert driver.conn.buffered < 512


def test_long_line_ending_with_cr_at_a_chunk_boundary() -> None:
    # 511 octets then CR fills the limit; the LF in the next chunk still ends the line.
    driver = ehlo_session()
    out = driver.feed_chunks([b"NOOP " + b"x" * 506 + b"\r", b"\nNOOP\r\n"])
    assert reply_lines(out) == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]
    driver = ehlo_session()
    out = driver.feed_chunks([b"NOOP " + b"x" * 505 + b"\r", b"\nNOOP\r\n"])
    assert reply_lines(out) == ["250 2.0.0 Ok", "250 2.0.0 Ok"]


def test_command_line_limit_is_configurable() -> None:
    driver = ehlo_session(Driver(settings(max_command_line=20)), name="c.test")
    out = driver.feed(b"NOOP 1234567890123\r\nNOOP 12345678901234\r\n")
    assert reply_lines(out) == ["250 2.0.0 Ok", "500 5.5.2 Line too long"]


def test_bare_lf_command_is_500_and_the_session_continues() -> None:
    driver = ehlo_session()
    out = driver.feed(b"NOOP\nMAIL FROM:<a@b.test>\nNOOP\r\n")
    assert reply_lines(out) == [
        "500 5.5.2 Syntax error: command lines must end with <CR><LF>",
        "500 5.5.2 Syntax error: command lines must end with <CR><LF>",
        "250 2.0.0 Ok",
    ]
    assert driver.events == []


def test_lone_lf_is_500() -> None:
    driver = ehlo_session()
    assert one_line(driver.feed(b"\n")) == (
        "500 5.5.2 Syntax error: command lines must end with <CR><LF>"
    )


@pytest.mark.parametrize(
    "line",
    [
        b"NOOP\x00\r\n",
        b"\x00\r\n",
        b"MAIL FROM:<j\xc3\xb6rg@b.test>\r\n",
        b"NOOP \xff\r\n",
        b"NO\rOP\r\n",
        b"NOOP\tx\r\n",
        b"NOOP \x1b[31m\r\n",
        b"NOOP \x7f\r\n",
    ],
)
def test_control_or_8bit_bytes_in_a_command_are_500(line: bytes) -> None:
    driver = ehlo_session()
    out = driver.feed(line + b"NOOP\r\n")
    assert reply_lines(out) == [
        "500 5.5.2 Syntax error: invalid character in command",
        "250 2.0.0 Ok",
    ]
    assert driver.events == []


# -- error limit ------------------------------------------------------------------------------


def test_tenth_error_gives_its_reply_then_421_and_closes() -> None:
    driver = ehlo_session()
    out = driver.feed(b"BOGUS\r\n" * 9)
    assert reply_lines(out) == ["500 5.5.2 Syntax error, command unrecognized"] * 9
    assert not driver.closed
    out = driver.feed(b"RCPT TO:<a@b.test>\r\nNOOP\r\nQUIT\r\n")
    assert reply_lines(out) == ["503 5.5.1 Need MAIL command before RCPT", TOO_MANY_ERRORS]
    assert driver.events == [ConnectionClosed()]
    assert driver.conn.state is State.CLOSED
    assert driver.conn.errors == 10


def test_nothing_is_processed_after_the_error_limit() -> None:
    driver = ehlo_session()
    out = driver.feed(b"BOGUS\r\n" * 10 + b"MAIL FROM:<a@b.test>\r\nNOOP\r\n")
    assert reply_lines(out)[-2:] == [
        "500 5.5.2 Syntax error, command unrecognized",
        TOO_MANY_ERRORS,
    ]
    assert len(reply_lines(out)) == 11
    assert driver.events == [ConnectionClosed()]
    assert driver.conn.buffered == 0
    assert driver.feed(b"NOOP\r\n") == b""


@pytest.mark.parametrize(
    ("bad", "reply"),
    [
        (b"NOOP\n", "500 5.5.2 Syntax error: command lines must end with <CR><LF>"),
        (b"NOOP " + b"x" * 600 + b"\r\n", "500 5.5.2 Line too long"),
        (b"X" * 600, None),  # the tenth long line is still arriving when the limit is reached
    ],
)
def test_error_limit_reached_by_a_line_error_reports_closed_at_once(
    bad: bytes, reply: str | None
) -> None:
    # Regression: the core used to return NEED_DATA here, leaving the driver waiting for a
    # client it had already said goodbye to.
    driver = ehlo_session()
    driver.feed(b"BOGUS\r\n" * 9)
    conn = driver.conn
    if reply is None:
        conn.receive_data(bad)
        assert conn.next_event() is NEED_DATA
        conn.receive_data(b"\r\n")
        reply = "500 5.5.2 Line too long"
    else:
        conn.receive_data(bad)
    assert conn.next_event() == ConnectionClosed()
    assert reply_lines(conn.data_to_send()) == [reply, TOO_MANY_ERRORS]


def test_policy_refusals_count_toward_the_error_limit() -> None:
    driver = ehlo_session(
        Driver(settings(max_errors=3), policy={RcptTo: replies.no_such_user("x@y.test")})
    )
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\n" + b"RCPT TO:<x@y.test>\r\n" * 4)
    assert codes(out) == [250, 550, 550, 550, 421]
    assert driver.closed


def test_error_limit_can_be_turned_off() -> None:
    driver = ehlo_session(Driver(settings(max_errors=0)))
    out = driver.feed(b"BOGUS\r\n" * 50 + b"NOOP\r\n")
    assert codes(out) == [500] * 50 + [250]
    assert not driver.closed


def test_error_limit_before_helo_has_no_enhanced_code() -> None:
    events, out = converse(b"BOGUS\r\n" * 10)
    assert reply_lines(out)[-1] == f"421 {HOST} Too many errors, closing transmission channel"
    assert events == [ConnectionClosed()]


# -- QUIT, abort, 421 -------------------------------------------------------------------------


def test_quit() -> None:
    driver = ehlo_session()
    out = driver.feed(b"QUIT\r\nNOOP\r\n")
    assert reply_lines(out) == [CLOSING]
    assert driver.events == [ConnectionClosed()]
    conn = driver.conn
    assert conn.state is State.CLOSED
    assert conn.next_event() == ConnectionClosed()
    assert conn.next_event() == ConnectionClosed()
    conn.receive_data(b"NOOP\r\n")
    assert conn.buffered == 0
    assert conn.data_to_send() == b""


def test_quit_before_helo_and_mid_transaction() -> None:
    _, out = converse(b"QUIT\r\n")
    assert reply_lines(out) == [GREETING, f"221 {HOST} Service closing transmission channel"]
    driver = transaction_session()
    assert one_line(driver.feed(b"QUIT\r\n")) == CLOSING
    assert driver.events == [ConnectionClosed()]


def test_abort_says_421_and_closes() -> None:
    driver = ehlo_session()
    driver.conn.abort(replies.timeout(HOST))
    assert driver.conn.data_to_send() == (
        f"421 4.4.2 {HOST} Timeout exceeded, closing transmission channel\r\n".encode()
    )
    assert driver.conn.next_event() == ConnectionClosed()
    assert driver.conn.state is State.CLOSED


def test_abort_while_an_event_awaits_its_reply() -> None:
    driver = ehlo_session()
    conn = driver.conn
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.abort(replies.shutting_down(HOST))
    assert conn.awaiting_reply is None
    assert reply_lines(conn.data_to_send()) == [
        f"421 4.3.2 {HOST} Service not available, closing transmission channel"
    ]
    assert conn.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        conn.accept()


def test_respond_421_closes() -> None:
    driver = ehlo_session(Driver(policy={RcptTo: replies.shutting_down(HOST)}))
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nNOOP\r\n")
    assert reply_lines(out) == [
        "250 2.1.0 Ok",
        f"421 4.3.2 {HOST} Service not available, closing transmission channel",
    ]
    assert kinds(driver.events) == ["MailFrom", "RcptTo", "ConnectionClosed"]
    assert driver.conn.state is State.CLOSED


def test_respond_421_to_hello_closes() -> None:
    driver = Driver(policy={Hello: replies.too_many_connections(HOST)})
    driver.greeting()
    out = driver.feed(b"EHLO c.test\r\n")
    assert one_line(out) == f"421 {HOST} Too many connections, try again later"
    assert driver.closed


def test_is_idle() -> None:
    driver = ehlo_session()
    conn = driver.conn
    assert conn.is_idle
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\n")
    conn.next_event()
    assert not conn.is_idle
    conn.accept()
    assert conn.is_idle
    conn.receive_data(b"RCPT TO:<c@d.test>\r\nDATA\r\n")
    driver.pump()
    assert conn.state is State.DATA
    assert not conn.is_idle
    driver.feed(b".\r\n")
    assert conn.is_idle
    conn.abort(replies.shutting_down(HOST))
    assert not conn.is_idle


def test_accept_and_respond_without_a_pending_event_are_program_errors() -> None:
    conn = ServerConnection(settings())
    conn.start()
    with pytest.raises(RuntimeError):
        conn.accept()
    with pytest.raises(RuntimeError):
        conn.respond(replies.OK)
    with pytest.raises(RuntimeError):
        conn.accept_message("X")


# -- pipelining -------------------------------------------------------------------------------


def test_whole_session_in_one_receive_data() -> None:
    events, out = converse(
        b"EHLO c.test\r\n"
        b"MAIL FROM:<a@b.test> SIZE=20\r\n"
        b"RCPT TO:<c@d.test>\r\n"
        b"RCPT TO:<bad>\r\n"
        b"RCPT TO:<e@f.test>\r\n"
        b"DATA\r\n"
        b"Subject: hi\r\n\r\nbody\r\n.\r\n"
        b"NOOP\r\n"
        b"QUIT\r\n"
    )
    assert reply_lines(out) == [
        GREETING,
        *EHLO_LINES,
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "553 5.1.3 Bad recipient address syntax",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        f"250 2.0.0 Ok: queued as {QUEUE_ID}",
        "250 2.0.0 Ok",
        CLOSING,
    ]
    assert kinds(events) == [
        "Hello",
        "MailFrom",
        "RcptTo",
        "RcptTo",
        "DataCommand",
        "MessageData",
        "MessageEnd",
        "ConnectionClosed",
    ]
    assert b"".join(e.data for e in events if isinstance(e, MessageData)) == (
        b"Subject: hi\r\n\r\nbody\r\n"
    )


def test_paused_while_an_event_awaits_its_reply() -> None:
    driver = ehlo_session()
    conn = driver.conn
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nNOOP\r\nBOGUS\r\n")
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    assert conn.awaiting_reply is mail
    # Nothing further is read or answered until the program replies.
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    assert conn.buffered == len(b"RCPT TO:<c@d.test>\r\nNOOP\r\nBOGUS\r\n")
    conn.accept()
    assert conn.data_to_send() == b"250 2.1.0 Ok\r\n"
    rcpt = conn.next_event()
    assert isinstance(rcpt, RcptTo)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""
    conn.respond(replies.no_such_user("c@d.test"))
    assert conn.next_event() is NEED_DATA
    assert reply_lines(conn.data_to_send()) == [
        "550 5.1.1 <c@d.test>: Recipient address rejected: User unknown",
        "250 2.0.0 Ok",
        "500 5.5.2 Syntax error, command unrecognized",
    ]


def test_paused_survives_more_data_arriving() -> None:
    driver = ehlo_session()
    conn = driver.conn
    conn.receive_data(b"MAIL FROM:<a@b.test>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.receive_data(b"RCPT TO:<c@d.test>\r\n")
    assert conn.next_event() is PAUSED
    conn.accept()
    assert isinstance(conn.next_event(), RcptTo)


def test_message_end_pauses_until_accept_message() -> None:
    driver = transaction_session()
    conn = driver.conn
    conn.receive_data(b"DATA\r\n")
    assert conn.next_event() == DataCommand()
    conn.accept()
    conn.receive_data(b"text\r\n.\r\nMAIL FROM:<x@y.test>\r\nQUIT\r\n")
    assert conn.next_event() == MessageData(b"text\r\n")
    end = conn.next_event()
    assert end == MessageEnd(6)
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b"354 End data with <CR><LF>.<CR><LF>\r\n"
    with pytest.raises(RuntimeError):
        conn.accept()  # a message is acknowledged with its queue id
    conn.accept_message("QID1")
    assert conn.data_to_send() == b"250 2.0.0 Ok: queued as QID1\r\n"
    assert conn.messages == 1
    assert isinstance(conn.next_event(), MailFrom)


def test_replies_leave_in_command_order_with_mixed_answers() -> None:
    driver = ehlo_session(Driver(policy={Verify: Reply.of(550, "No such user", "5.1.1")}))
    out = driver.feed(
        b"NOOP\r\nVRFY x\r\nHELP DATA\r\nMAIL FROM:<a@b.test>\r\nBOGUS\r\nRSET\r\nVRFY y\r\n"
    )
    assert first_lines(out) == [
        "250 2.0.0 Ok",
        "550 5.1.1 No such user",
        "214 2.0.0 End of HELP info",
        "250 2.1.0 Ok",
        "500 5.5.2 Syntax error, command unrecognized",
        "250 2.0.0 Ok",
        "550 5.1.1 No such user",
    ]
    assert kinds(driver.events) == ["Verify", "MailFrom", "Reset", "Verify"]


def test_command_split_across_receive_data_calls() -> None:
    driver = ehlo_session()
    data = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
    out = driver.feed_chunks([bytes([b]) for b in data])
    assert reply_lines(out) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]


def test_crlf_split_between_calls() -> None:
    driver = ehlo_session()
    assert driver.feed(b"NOOP\r") == b""
    assert driver.conn.next_event() is NEED_DATA
    assert driver.feed(b"\n") == b"250 2.0.0 Ok\r\n"


# -- classic mode: the seed's sample conversation -----------------------------------------------

SEED_BODY = b"From: (Ralph Martin)\r\nSubject: Arrows\r\nThis is line one.\r\nThis is line two.\r\n"
SEED_CONVERSATION = (
    b"HELO\r\n"
    b"MAIL From: <(Ralph Martin)>\r\n"
    b"RCPT To: <dave@cs.cf.ac.uk>\r\n"
    b"DATA\r\n" + SEED_BODY + b".\r\n"
    b"QUIT\r\n"
)
SEED_HOST = "sentinel.cs.cf.ac.uk"


def test_classic_mode_replays_the_seed_conversation() -> None:
    driver = Driver(settings(classic=True, hostname=SEED_HOST), queue_id="AAA14672")
    out = driver.greeting()
    for line in SEED_CONVERSATION.split(b"\r\n")[:-1]:
        out += driver.feed(line + b"\r\n")
    assert reply_lines(out) == [
        f"220 {SEED_HOST} ESMTP Pigeon",
        f"250 {SEED_HOST} Hello [{CLIENT_IP}], pleased to meet you",
        "250 <(Ralph Martin)>... Sender ok",
        "250 <dave@cs.cf.ac.uk>... Recipient ok",
        '354 Enter mail, end with "." on a line by itself',
        "250 AAA14672 Message accepted for delivery",
        f"221 {SEED_HOST} closing connection",
    ]
    assert [e for e in driver.events if not isinstance(e, MessageData)] == [
        Hello("", extended=False),
        MailFrom(None, {}, raw="<(Ralph Martin)>"),
        RcptTo(Address("dave", "cs.cf.ac.uk"), {}, raw="<dave@cs.cf.ac.uk>"),
        DataCommand(),
        MessageEnd(len(SEED_BODY)),
        ConnectionClosed(),
    ]
    # The body (no blank line after the headers) is delivered byte for byte.
    assert driver.message_text() == SEED_BODY


def test_classic_mode_whole_conversation_in_one_chunk() -> None:
    events, out = converse(SEED_CONVERSATION, settings(classic=True))
    assert codes(out) == [220, 250, 250, 250, 354, 250, 221]
    assert b"".join(e.data for e in events if isinstance(e, MessageData)) == SEED_BODY


def test_default_mode_refuses_the_seed_conversation() -> None:
    events, out = converse(SEED_CONVERSATION)
    assert reply_lines(out) == [
        GREETING,
        "501 Syntax: HELO <domain>: your domain is missing",
        "503 Send HELO/EHLO first",
        "503 Send HELO/EHLO first",
        "503 Send HELO/EHLO first",
        # The body lines arrive as commands and are not understood.
        "500 Syntax error, command unrecognized",
        "500 Syntax error, command unrecognized",
        "500 Syntax error, command unrecognized",
        "500 Syntax error, command unrecognized",
        "500 Syntax error, command unrecognized",
        f"221 {HOST} Service closing transmission channel",
    ]
    assert events == [ConnectionClosed()]


def test_default_mode_refuses_the_comment_path() -> None:
    driver = helo_session(name="mailhost2.cf.ac.uk")
    assert one_line(driver.feed(b"MAIL From: <(Ralph Martin)>\r\n")) == (
        "501 Syntax: comments are not allowed in a path (RFC 5321 4.1.2)"
    )
    assert driver.events == []


def test_classic_helo_with_a_name() -> None:
    driver = Driver(settings(classic=True))
    driver.greeting()
    assert one_line(driver.feed(b"HELO mailhost2.cf.ac.uk\r\n")) == (
        f"250 {HOST} Hello mailhost2.cf.ac.uk [{CLIENT_IP}], pleased to meet you"
    )
    assert driver.events == [Hello("mailhost2.cf.ac.uk", extended=False)]


def test_classic_helo_takes_several_words() -> None:
    driver = Driver(settings(classic=True))
    driver.greeting()
    driver.feed(b"HELO dave at home\r\n")
    assert driver.events == [Hello("dave at home", extended=False)]


def test_classic_bare_ehlo_is_still_501() -> None:
    events, out = converse(b"EHLO\r\n", settings(classic=True))
    assert events == []
    assert reply_lines(out)[1] == "501 Syntax: EHLO <domain>: your domain is missing"


def test_classic_ehlo_reply_is_the_extension_list() -> None:
    _, out = converse(b"EHLO c.test\r\n", settings(classic=True))
    assert replies_of(out)[1] == EHLO_LINES


def test_classic_path_without_brackets() -> None:
    driver = helo_session(Driver(settings(classic=True)))
    out = driver.feed(b"MAIL FROM:dave@cs.cf.ac.uk\r\nRCPT TO:ralph@cs.cf.ac.uk\r\n")
    assert reply_lines(out) == [
        "250 dave@cs.cf.ac.uk... Sender ok",
        "250 ralph@cs.cf.ac.uk... Recipient ok",
    ]
    assert driver.events == [
        MailFrom(Address("dave", "cs.cf.ac.uk"), {}, raw="dave@cs.cf.ac.uk"),
        RcptTo(Address("ralph", "cs.cf.ac.uk"), {}, raw="ralph@cs.cf.ac.uk"),
    ]


def test_classic_comment_around_a_recipient() -> None:
    driver = helo_session(Driver(settings(classic=True)))
    driver.feed(b"MAIL FROM:<>\r\n")
    driver.events.clear()
    assert one_line(driver.feed(b"RCPT TO:<(Dave) dave@cs.cf.ac.uk>\r\n")) == (
        "250 <(Dave) dave@cs.cf.ac.uk>... Recipient ok"
    )
    assert driver.events == [
        RcptTo(Address("dave", "cs.cf.ac.uk"), {}, raw="<(Dave) dave@cs.cf.ac.uk>")
    ]


def test_classic_mode_still_refuses_bad_mailboxes() -> None:
    driver = helo_session(Driver(settings(classic=True)))
    assert one_line(driver.feed(b"MAIL FROM:<(Ralph) not an address>\r\n")) == (
        "553 Bad sender address syntax"
    )


def test_recipients_over_the_limit_do_not_count_as_errors() -> None:
    # Regression: a pipelining client that sent more than max_recipients RCPTs at once got
    # 452 for each extra one, reached the error limit, and lost the whole transaction to 421.
    driver = ehlo_session(Driver(settings(max_recipients=5)))
    batch = b"".join(b"RCPT TO:<user%d@example.test>\r\n" % n for n in range(30))
    out = driver.feed(b"MAIL FROM:<a@b.test>\r\n" + batch + b"DATA\r\nhi\r\n.\r\n")
    assert codes(out) == [250] + [250] * 5 + [452] * 25 + [354, 250]
    assert driver.conn.errors == 0
    assert driver.conn.messages == 1


def test_echoed_client_text_keeps_reply_lines_within_512_octets() -> None:
    # RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including the code and CRLF.
    # Regression: a long bad literal in EHLO, a long classic HELO name or a long classic
    # path with comments was echoed whole.
    driver = Driver()
    driver.greeting()
    literal = "[" + "1" * 500 + "]"
    line = one_line(driver.feed(f"EHLO {literal}\r\n".encode()))
    assert line == f"501 EHLO: invalid address literal {literal[:40]}..."

    driver = Driver(settings(classic=True))
    driver.greeting()
    name = "h" * 500
    line = one_line(driver.feed(f"HELO {name}\r\n".encode()))
    assert line == f"250 {HOST} Hello {name[:255]}... [{CLIENT_IP}], pleased to meet you"
    assert driver.events == [Hello(name, extended=False)]  # the event keeps it all

    raw = "<(" + "c" * 495 + ")>"
    line = one_line(driver.feed(f"MAIL FROM:{raw}\r\n".encode()))
    assert line == f"250 {raw[:256]}...... Sender ok"
    assert len(line) + 2 <= 512
    line = one_line(driver.feed(f"RCPT TO:<({'d' * 480})x@y.test>\r\n".encode()))
    assert line.endswith("...... Recipient ok")
    assert len(line) + 2 <= 512


def test_an_accepted_message_clears_the_error_count() -> None:
    # Postfix's rule: the limit is on errors made without getting mail through.
    driver = ehlo_session()
    driver.feed(b"BOGUS\r\n" * 9)
    assert driver.conn.errors == 9
    driver.feed(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert driver.conn.errors == 0
    out = driver.feed(b"BOGUS\r\n" * 9 + b"NOOP\r\n")
    assert reply_lines(out)[-1] == "250 2.0.0 Ok"
    assert not driver.closed
