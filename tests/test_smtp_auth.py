"""AUTH (RFC 4954) in the protocol core, with no sockets: what is offered when, the SASL
exchange line by line, and each bad input with its RFC reply."""

from __future__ import annotations

import base64

import hypothesis
import pytest
from hypothesis import strategies as st

from pigeon.smtp import (
    Auth,
    AuthAborted,
    AuthResponse,
    Event,
    ServerSettings,
    State,
    replies,
)
from tests.smtp_helpers import (
    Decision,
    Driver,
    codes,
    ehlo_session,
    first_lines,
    replies_of,
    settings,
)

MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")
PLAIN_ALICE = base64.b64encode(b"\0alice\0pw").decode()


def auth_settings(**overrides: object) -> ServerSettings:
    options: dict[str, object] = {"auth_mechanisms": MECHANISMS, "auth_plaintext": True}
    options.update(overrides)
    return settings(**options)


def login_policy(event: Event) -> Decision:
    """PLAIN in one step: alice/pw is right, anything else wrong; other mechanisms chat."""
    if isinstance(event, Auth):
        if event.initial is None:
            return replies.challenge(b"")
        return replies.AUTH_SUCCEEDED if event.initial == b"\0alice\0pw" else replies.AUTH_INVALID
    if isinstance(event, AuthResponse):
        if event.data == b"more":
            return replies.challenge(b"again")
        return replies.AUTH_SUCCEEDED if event.data == b"\0alice\0pw" else replies.AUTH_INVALID
    return None


def session(**overrides: object) -> Driver:
    return ehlo_session(Driver(auth_settings(**overrides), policy=login_policy))


def state_of(driver: Driver) -> State:
    return driver.conn.state


def ehlo_lines(driver: Driver) -> list[str]:
    driver.greeting()
    (reply,) = replies_of(driver.feed(b"EHLO client.test\r\n"))
    return [line[4:] for line in reply]


# -- what is offered ---------------------------------------------------------------------------


def test_ehlo_lists_the_mechanisms() -> None:
    lines = ehlo_lines(Driver(auth_settings()))
    assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in lines


def test_not_listed_in_the_clear_unless_allowed() -> None:
    lines = ehlo_lines(Driver(auth_settings(auth_plaintext=False)))
    assert not any(line.startswith("AUTH") for line in lines)


def test_listed_under_tls() -> None:
    lines = ehlo_lines(Driver(auth_settings(auth_plaintext=False), tls=True))
    assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in lines


def test_not_offered_at_all_is_502() -> None:
    driver = ehlo_session(Driver(settings()))
    assert first_lines(driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())) == [
        "502 5.5.1 Command not implemented"
    ]


def test_plaintext_where_not_allowed_is_538() -> None:
    """RFC 4954 section 6: the mechanism may be used only over an encrypted channel."""
    driver = ehlo_session(Driver(auth_settings(auth_plaintext=False)))
    out = driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert first_lines(out) == [
        "538 5.7.11 Encryption required for requested authentication mechanism"
    ]
    assert not any(isinstance(e, Auth) for e in driver.events)


# -- the exchange ------------------------------------------------------------------------------


def test_initial_response() -> None:
    driver = session()
    out = driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert first_lines(out) == ["235 2.7.0 Authentication successful"]
    assert driver.events == [Auth("PLAIN", b"\0alice\0pw")]
    assert driver.conn.authenticated


def test_challenge_and_response() -> None:
    driver = session()
    assert driver.feed(b"auth plain\r\n") == b"334 \r\n"  # no enhanced code on a challenge
    assert state_of(driver) is State.AUTH
    out = driver.feed(b"bW9yZQ==\r\n")  # "more": the policy challenges again
    assert out == b"334 YWdhaW4=\r\n"
    out = driver.feed(PLAIN_ALICE.encode() + b"\r\n")
    assert first_lines(out) == ["235 2.7.0 Authentication successful"]
    assert driver.events == [
        Auth("PLAIN", None),
        AuthResponse(b"more"),
        AuthResponse(b"\0alice\0pw"),
    ]
    assert state_of(driver) is State.READY


def test_empty_initial_response_is_an_equals_sign() -> None:
    driver = session()
    driver.feed(b"AUTH PLAIN =\r\n")
    assert driver.events == [Auth("PLAIN", b"")]


def test_a_response_line_may_be_longer_than_a_command() -> None:
    driver = session()
    driver.feed(b"AUTH PLAIN\r\n")
    long = base64.b64encode(b"x" * 3000)  # 4000 octets: over 512, under 12288
    out = driver.feed(long + b"\r\n")
    assert codes(out) == [535]
    assert driver.events[-1] == AuthResponse(b"x" * 3000)


def test_wrong_credentials() -> None:
    driver = session()
    out = driver.feed(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
    assert first_lines(out) == ["535 5.7.8 Authentication credentials invalid"]
    assert not driver.conn.authenticated
    # The client may try again.
    assert codes(driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())) == [235]


def test_cancel_with_star() -> None:
    driver = session()
    driver.feed(b"AUTH LOGIN\r\n")
    out = driver.feed(b"*\r\n")
    assert first_lines(out) == ["501 5.0.0 Authentication cancelled"]
    assert driver.events[-1] == AuthAborted(replies.AUTH_CANCELLED)
    assert state_of(driver) is State.READY
    assert codes(driver.feed(b"NOOP\r\n")) == [250]  # commands again


def test_malformed_base64_in_a_response() -> None:
    driver = session()
    driver.feed(b"AUTH LOGIN\r\n")
    out = driver.feed(b"not base64!\r\n")
    assert first_lines(out) == ["501 5.5.2 Cannot Base64-decode client response"]
    assert isinstance(driver.events[-1], AuthAborted)
    assert state_of(driver) is State.READY


@pytest.mark.parametrize("initial", ["!!!!", "YWJj=", "YW Jj", "YWJ"])
def test_malformed_base64_in_the_initial_response(initial: str) -> None:
    driver = session()
    out = driver.feed(f"AUTH PLAIN {initial}\r\n".encode())
    assert first_lines(out)[0].startswith(("501 5.5.2", "501 5.5.4"))
    assert not any(isinstance(e, Auth) for e in driver.events)


def test_unknown_mechanism() -> None:
    driver = session()
    out = driver.feed(b"AUTH CRAM-MD5\r\n")
    assert first_lines(out) == ["504 5.5.4 Unrecognized authentication type"]


def test_no_mechanism() -> None:
    driver = session()
    assert codes(driver.feed(b"AUTH\r\n")) == [501]


def test_auth_twice() -> None:
    driver = session()
    driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    out = driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert first_lines(out) == ["503 5.5.1 Already authenticated"]


def test_auth_during_a_transaction() -> None:
    driver = session()
    driver.feed(b"MAIL FROM:<alice@example.test>\r\n")
    out = driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert first_lines(out) == ["503 5.5.1 AUTH not permitted during a mail transaction"]


def test_auth_before_ehlo() -> None:
    driver = Driver(auth_settings(), policy=login_policy)
    driver.greeting()
    # No enhanced codes before EHLO offered them (RFC 2034 section 3).
    assert first_lines(driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())) == [
        "503 Send EHLO first"
    ]
    driver.feed(b"HELO client.test\r\n")  # AUTH is an ESMTP extension
    assert codes(driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())) == [503]


def test_auth_parameter_of_mail_is_accepted_where_auth_is_offered() -> None:
    """RFC 4954 section 5."""
    driver = session()
    assert codes(driver.feed(b"MAIL FROM:<alice@example.test> AUTH=<>\r\n")) == [250]


# -- submission: AUTH before MAIL --------------------------------------------------------------


def test_mail_before_auth_is_530() -> None:
    driver = session(auth_required=True)
    out = driver.feed(b"MAIL FROM:<alice@example.test>\r\n")
    assert first_lines(out) == ["530 5.7.0 Authentication required"]
    driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert codes(driver.feed(b"MAIL FROM:<alice@example.test>\r\n")) == [250]


def test_mail_before_starttls_says_starttls_first() -> None:
    driver = session(auth_required=True, auth_plaintext=False, starttls=True)
    out = driver.feed(b"MAIL FROM:<alice@example.test>\r\n")
    assert first_lines(out) == ["530 5.7.0 Must issue a STARTTLS command first"]


def test_starttls_forgets_authentication() -> None:
    driver = session(starttls=True)
    driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())
    assert driver.conn.authenticated
    driver.feed(b"STARTTLS\r\n")  # the driver completes the "handshake" at once
    assert driver.conn.tls_active
    assert not driver.conn.authenticated
    driver.feed(b"EHLO client.test\r\n")
    assert codes(driver.feed(f"AUTH PLAIN {PLAIN_ALICE}\r\n".encode())) == [235]


def test_errors_in_auth_count_toward_the_limit() -> None:
    driver = session(max_errors=3)
    driver.feed(b"AUTH LOGIN\r\n*\r\n")
    driver.feed(b"AUTH PLAIN !!!!\r\n")
    out = driver.feed(b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n")
    assert codes(out) == [535, 421]
    assert driver.closed


# -- anything at all ---------------------------------------------------------------------------

_TOKENS = [
    b"AUTH PLAIN",
    b"AUTH LOGIN ",
    b"AUTH SCRAM-SHA-256 ",
    b"AUTH X",
    b"EHLO c.test\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"RSET\r\n",
    b"STARTTLS\r\n",
    b"*\r\n",
    b"=",
    b"bW9yZQ==",
    PLAIN_ALICE.encode(),
    b"\r\n",
    b"\n",
    b" ",
]
_input = st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=30)), max_size=30).map(
    b"".join
)


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(
    data=_input,
    plaintext=st.booleans(),
    required=st.booleans(),
)
def test_arbitrary_input_with_auth_never_raises(
    data: bytes, plaintext: bool, required: bool
) -> None:
    driver = Driver(
        auth_settings(auth_plaintext=plaintext, auth_required=required, starttls=True),
        policy=login_policy,
    )
    out = driver.greeting() + driver.feed(data)
    for reply in replies_of(out):
        assert len(reply[-1]) + 2 <= 512
    if driver.conn.state is State.AUTH:
        # Only after a challenge, with no command waiting for an answer.
        assert driver.conn.awaiting_reply is None
