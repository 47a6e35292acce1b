"""Tests for pigeon.smtp._replies: the wire form of replies, their validation, and when the
connection shows enhanced status codes (RFC 2034)."""

from __future__ import annotations

import pytest

from pigeon.smtp import Event, RcptTo, Reply, replies
from tests.smtp_helpers import HOST, Driver, ehlo_session, helo_session, replies_of, settings

# -- to_bytes ---------------------------------------------------------------------------------


def test_single_line() -> None:
    reply = Reply.of(250, "Ok", "2.0.0")
    assert reply.to_bytes() == b"250 Ok\r\n"
    assert reply.to_bytes(enhanced=True) == b"250 2.0.0 Ok\r\n"


def test_multi_line_uses_dash_then_space() -> None:
    reply = Reply(250, ("first", "second", "last"))
    assert reply.to_bytes() == b"250-first\r\n250-second\r\n250 last\r\n"


def test_multi_line_enhanced_prefix_on_every_line() -> None:
    # RFC 2034 section 3: each line of a multi-line reply carries the status code.
    reply = Reply(550, ("one", "two"), "5.1.1")
    assert reply.to_bytes(enhanced=True) == b"550-5.1.1 one\r\n550 5.1.1 two\r\n"


def test_enhanced_without_status_adds_nothing() -> None:
    reply = Reply.of(354, "End data with <CR><LF>.<CR><LF>")
    assert reply.to_bytes(enhanced=True) == b"354 End data with <CR><LF>.<CR><LF>\r\n"


def test_empty_text_line_is_allowed() -> None:
    assert Reply.of(250, "").to_bytes() == b"250 \r\n"


def test_text_is_utf8_on_the_wire() -> None:
    assert Reply.of(250, "<jörg@example.test>").to_bytes() == "250 <jörg@example.test>\r\n".encode()


def test_str_shows_the_enhanced_form_without_crlf() -> None:
    assert str(Reply(250, ("a", "b"), "2.0.0")) == "250-2.0.0 a\r\n250 2.0.0 b"
    assert str(Reply.of(220, "hello")) == "220 hello"


def test_text_joins_lines() -> None:
    assert Reply(214, ("a", "b", "c")).text == "a b c"


@pytest.mark.parametrize(
    ("code", "positive"), [(211, True), (250, True), (354, True), (421, False), (554, False)]
)
def test_positive_and_error(code: int, positive: bool) -> None:
    reply = Reply.of(code, "x")
    assert reply.is_positive is positive
    assert reply.is_error is not positive


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 199, 160, 260, 299, 360, 499, 560, 600, 999, 1250, -250])
def test_code_outside_the_reply_code_grammar_is_refused(code: int) -> None:
    # RFC 5321 section 4.2: Reply-code = %x32-35 %x30-35 %x30-39
    with pytest.raises(ValueError, match="not an SMTP reply code"):
        Reply.of(code, "x")


@pytest.mark.parametrize("code", [200, 211, 259, 354, 421, 559])
def test_code_within_the_grammar_is_accepted(code: int) -> None:
    assert Reply.of(code, "x").code == code


def test_reply_needs_a_line() -> None:
    with pytest.raises(ValueError, match="at least one line"):
        Reply(250, ())


@pytest.mark.parametrize("text", ["a\rb", "a\nb", "a\r\n250 injected", "\r\n"])
def test_line_breaks_in_text_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="line breaks"):
        Reply.of(250, text)
    with pytest.raises(ValueError, match="line breaks"):
        Reply(250, ("fine", text))


@pytest.mark.parametrize(
    ("code", "status"), [(250, "5.0.0"), (550, "2.0.0"), (451, "5.3.0"), (421, "2.0.0")]
)
def test_status_class_must_match_the_code(code: int, status: str) -> None:
    with pytest.raises(ValueError, match="does not match"):
        Reply.of(code, "x", status)


@pytest.mark.parametrize(
    "status", ["", "2", "2.0", "2.0.0.0", "2..0", "2.0.", "2.a.0", "2.1000.0", "2.0.1000", " 2.0.0"]
)
def test_status_must_be_an_rfc3463_code(status: str) -> None:
    with pytest.raises(ValueError, match="enhanced status"):
        Reply.of(250, "x", status)


def test_status_for_a_3xx_code_is_refused() -> None:
    # RFC 3463 has no class 3.
    with pytest.raises(ValueError, match="enhanced status"):
        Reply.of(354, "go ahead", "3.0.0")


@pytest.mark.parametrize("status", ["2.0.0", "2.1.5", "4.7.0", "5.5.4", "5.123.456"])
def test_well_formed_status_is_accepted(status: str) -> None:
    assert Reply.of(int(status[0]) * 100 + 50, "x", status).status == status


def test_reply_is_frozen() -> None:
    reply = Reply.of(250, "Ok")
    with pytest.raises(AttributeError):
        reply.code = 550  # type: ignore[misc]


# -- the catalogue -----------------------------------------------------------------------------


def test_catalogue_replies_are_valid_and_consistent() -> None:
    for name in dir(replies):
        value = getattr(replies, name)
        if isinstance(value, Reply):
            # Building it again runs the same validation; the status class matches the code.
            assert Reply(value.code, value.lines, value.status) == value
            if value.status is not None:
                assert value.status[0] == str(value.code)[0], name


@pytest.mark.parametrize(
    ("reply", "code", "status", "text"),
    [
        (replies.service_ready("mx"), 220, None, "mx ESMTP Pigeon"),
        (replies.service_ready("mx", "hi"), 220, None, "mx hi"),
        (replies.closing("mx"), 221, "2.0.0", "mx Service closing transmission channel"),
        (replies.queued("ABC"), 250, "2.0.0", "Ok: queued as ABC"),
        (replies.will_forward("a@b"), 251, "2.1.5", "User not local; will forward to <a@b>"),
        (
            replies.shutting_down("mx"),
            421,
            "4.3.2",
            "mx Service not available, closing transmission channel",
        ),
        (
            replies.too_many_connections("mx"),
            421,
            "4.7.0",
            "mx Too many connections, try again later",
        ),
        (
            replies.too_many_errors("mx"),
            421,
            "4.7.0",
            "mx Too many errors, closing transmission channel",
        ),
        (replies.timeout("mx"), 421, "4.4.2", "mx Timeout exceeded, closing transmission channel"),
        (replies.syntax("bad"), 501, "5.5.4", "bad"),
        (replies.bad_sequence("order"), 503, "5.5.1", "order"),
        (
            replies.no_such_user("a@b"),
            550,
            "5.1.1",
            "<a@b>: Recipient address rejected: User unknown",
        ),
        (replies.relay_denied("a@b"), 550, "5.7.1", "<a@b>: Relay access denied"),
        (replies.user_not_local("a@b"), 551, "5.1.6", "User not local; please try <a@b>"),
        (replies.TOO_MANY_RECIPIENTS, 452, "4.5.3", "Too many recipients"),
        (replies.MESSAGE_TOO_BIG, 552, "5.3.4", "Message size exceeds fixed maximum message size"),
        (replies.NO_VALID_RECIPIENTS, 554, "5.5.1", "No valid recipients"),
        (
            replies.PARAMETERS_NOT_RECOGNIZED,
            555,
            "5.5.4",
            "MAIL FROM/RCPT TO parameters not recognized",
        ),
        (replies.COMMAND_UNRECOGNIZED, 500, "5.5.2", "Syntax error, command unrecognized"),
        (replies.NOT_IMPLEMENTED, 502, "5.5.1", "Command not implemented"),
        (replies.START_MAIL_INPUT, 354, None, "End data with <CR><LF>.<CR><LF>"),
    ],
)
def test_catalogue_entries(reply: Reply, code: int, status: str | None, text: str) -> None:
    assert (reply.code, reply.status, reply.text) == (code, status, text)


# -- enhanced codes in a session (RFC 2034 section 3) -------------------------------------------


def test_greeting_never_has_an_enhanced_code() -> None:
    assert Driver().greeting() == f"220 {HOST} ESMTP Pigeon\r\n".encode()


def test_no_enhanced_codes_before_ehlo() -> None:
    driver = Driver()
    driver.greeting()
    assert driver.feed(b"NOOP\r\n") == b"250 Ok\r\n"
    assert driver.feed(b"MAIL FROM:<a@b.test>\r\n") == b"503 Send HELO/EHLO first\r\n"


def test_ehlo_reply_has_no_enhanced_code_but_later_replies_do() -> None:
    driver = Driver()
    driver.greeting()
    ehlo = driver.feed(b"EHLO client.test\r\n")
    assert replies_of(ehlo) == [
        [
            f"250-{HOST}",
            "250-PIPELINING",
            "250-SIZE 26214400",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250 HELP",
        ]
    ]
    assert driver.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"


def test_helo_session_has_no_enhanced_codes() -> None:
    driver = helo_session()
    assert driver.feed(b"MAIL FROM:<a@b.test>\r\n") == b"250 Ok\r\n"
    assert driver.feed(b"BOGUS\r\n") == b"500 Syntax error, command unrecognized\r\n"


def test_helo_after_ehlo_turns_enhanced_codes_off() -> None:
    driver = ehlo_session()
    assert driver.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert driver.feed(b"HELO client.test\r\n") == f"250 {HOST}\r\n".encode()
    assert driver.feed(b"NOOP\r\n") == b"250 Ok\r\n"


def test_refused_ehlo_does_not_turn_enhanced_codes_on() -> None:
    refusal = Reply.of(550, "Go away", "5.7.1")
    driver = Driver(policy=lambda event: refusal)
    driver.greeting()
    assert driver.feed(b"EHLO client.test\r\n") == b"550 Go away\r\n"
    assert driver.feed(b"NOOP\r\n") == b"250 Ok\r\n"


def test_multi_line_help_carries_the_code_on_every_line() -> None:
    driver = ehlo_session()
    assert replies_of(driver.feed(b"HELP QUIT\r\n")) == [
        ["214-2.0.0 QUIT", "214-2.0.0 End the session.", "214 2.0.0 End of HELP info"]
    ]


def test_setting_off_hides_codes_and_the_keyword() -> None:
    driver = ehlo_session(Driver(settings(enhanced_status_codes=False)))
    assert driver.feed(b"NOOP\r\n") == b"250 Ok\r\n"
    driver = Driver(settings(enhanced_status_codes=False))
    driver.greeting()
    assert b"ENHANCEDSTATUSCODES" not in driver.feed(b"EHLO client.test\r\n")


def test_policy_reply_is_shown_with_its_code() -> None:
    def policy(event: Event) -> Reply | None:
        return replies.relay_denied("x@elsewhere.test") if isinstance(event, RcptTo) else None

    driver = ehlo_session(Driver(policy=policy))
    driver.feed(b"MAIL FROM:<a@b.test>\r\n")
    assert driver.feed(b"RCPT TO:<x@elsewhere.test>\r\n") == (
        b"550 5.7.1 <x@elsewhere.test>: Relay access denied\r\n"
    )
