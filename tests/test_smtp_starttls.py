"""STARTTLS (RFC 3207) in the protocol core: what EHLO offers, when STARTTLS is in sequence,
what the session forgets after it, and the injection defence (CVE-2011-0411): bytes the
client sent after STARTTLS, before the handshake, are never read as commands.

No sockets: the "handshake" is the driver calling ``tls_started()``.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.smtp import (
    NEED_DATA,
    PAUSED,
    Event,
    Hello,
    MailFrom,
    Reset,
    ServerConnection,
    StartTLS,
    State,
    replies,
)
from tests.smtp_helpers import (
    CLIENT_IP,
    HOST,
    Driver,
    codes,
    ehlo_session,
    first_lines,
    helo_session,
    kinds,
    replies_of,
    reply_lines,
    transaction_session,
)
from tests.smtp_helpers import settings as server_settings

OFFERED = server_settings(starttls=True)
READY = "220 2.0.0 Ready to start TLS"
EHLO_WITH_STARTTLS = [
    f"250-{HOST}",
    "250-PIPELINING",
    "250-SIZE 26214400",
    "250-8BITMIME",
    "250-STARTTLS",
    "250-ENHANCEDSTATUSCODES",
    "250 HELP",
]
EHLO_WITHOUT = [line for line in EHLO_WITH_STARTTLS if line != "250-STARTTLS"]
INJECTION = b"EHLO x\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n"


def offered(*, handshake: bool = True) -> Driver:
    driver = Driver(OFFERED, handshake=handshake)
    driver.greeting()
    return driver


def ehlo_reply(driver: Driver, name: str = "client.test") -> list[str]:
    (reply,) = replies_of(driver.feed(f"EHLO {name}\r\n".encode()))
    return reply


def waiting_for_handshake(data: bytes = b"EHLO client.test\r\nSTARTTLS\r\n") -> ServerConnection:
    """A core that has said 220 to STARTTLS and waits; the driver did no handshake."""
    driver = offered(handshake=False)
    driver.feed(data)
    assert driver.conn.state is State.TLS
    return driver.conn


# -- what EHLO offers -------------------------------------------------------------------------


def test_ehlo_lists_starttls_when_offered() -> None:
    assert ehlo_reply(offered()) == EHLO_WITH_STARTTLS


def test_ehlo_does_not_list_starttls_when_not_offered() -> None:
    assert ehlo_reply(ehlo_session(Driver(server_settings()))) == EHLO_WITHOUT


def test_ehlo_after_tls_does_not_list_starttls() -> None:
    # RFC 3207 section 4.2: "The server MUST NOT return the STARTTLS extension in response
    # to an EHLO command received after a TLS handshake has completed."
    driver = ehlo_session(offered())
    assert first_lines(driver.feed(b"STARTTLS\r\n")) == [READY]
    assert driver.conn.tls_active
    assert ehlo_reply(driver) == EHLO_WITHOUT


def test_implicit_tls_never_lists_starttls() -> None:
    driver = Driver(server_settings(), tls=True)
    driver.greeting()
    assert driver.conn.tls_active
    assert ehlo_reply(driver) == EHLO_WITHOUT


def test_help_lists_starttls_only_when_offered() -> None:
    def listed(driver: Driver) -> bool:
        (reply,) = replies_of(driver.feed(b"HELP\r\n"))
        return "STARTTLS" in reply[1]

    assert listed(offered())
    assert not listed(ehlo_session(Driver(server_settings())))
    assert first_lines(ehlo_session(offered()).feed(b"HELP STARTTLS\r\n")) == [
        "214 2.0.0 End of HELP info"
    ]
    unknown = ehlo_session(Driver(server_settings())).feed(b"HELP STARTTLS\r\n")
    assert codes(unknown) == [504]


# -- the command ------------------------------------------------------------------------------


def test_starttls_is_an_event_answered_220() -> None:
    driver = ehlo_session(offered())
    out = driver.feed(b"STARTTLS\r\n")
    assert replies_of(out) == [[READY]]
    assert kinds(driver.events) == ["StartTLS"]


def test_starttls_not_offered_is_502() -> None:
    driver = ehlo_session(Driver(server_settings()))
    assert first_lines(driver.feed(b"STARTTLS\r\n")) == ["502 5.5.1 Command not implemented"]
    assert driver.events == []
    assert driver.conn.errors == 1
    assert driver.conn.state is State.READY


def test_starttls_with_an_argument_is_501() -> None:
    # RFC 3207 section 4: "501 Syntax error (no parameters allowed)"
    driver = ehlo_session(offered())
    out = driver.feed(b"STARTTLS now\r\n")
    assert first_lines(out) == ["501 5.5.4 Syntax: STARTTLS takes no parameters"]
    assert driver.events == []
    assert not driver.conn.tls_active


def test_starttls_is_case_insensitive() -> None:
    driver = ehlo_session(offered())
    assert first_lines(driver.feed(b"starttls\r\n")) == [READY]


def test_starttls_twice_is_503() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"STARTTLS\r\n")
    driver.feed(b"EHLO client.test\r\n")
    driver.events.clear()
    out = driver.feed(b"STARTTLS\r\n")
    assert first_lines(out) == ["503 5.5.1 TLS already active"]
    assert driver.events == []
    assert driver.conn.state is State.READY


def test_starttls_right_after_tls_is_503_too() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"STARTTLS\r\n")
    # Not introduced again yet: still, TLS is what is wrong.
    assert codes(driver.feed(b"STARTTLS\r\n")) == [503]


def test_starttls_on_implicit_tls_is_503() -> None:
    driver = ehlo_session(Driver(server_settings(), tls=True))
    assert first_lines(driver.feed(b"STARTTLS\r\n")) == ["503 5.5.1 TLS already active"]


def test_starttls_before_ehlo_is_503() -> None:
    driver = offered()
    assert first_lines(driver.feed(b"STARTTLS\r\n")) == ["503 Send EHLO first"]
    assert driver.conn.state is State.START


def test_starttls_in_a_transaction_is_503() -> None:
    driver = transaction_session(offered())
    out = driver.feed(b"STARTTLS\r\n")
    assert first_lines(out) == ["503 5.5.1 Mail transaction in progress; send RSET first"]
    assert driver.conn.state is State.RCPT


def test_starttls_after_helo_is_allowed() -> None:
    driver = helo_session(offered())
    assert first_lines(driver.feed(b"STARTTLS\r\n")) == ["220 Ready to start TLS"]


def test_refused_with_454_the_session_goes_on_in_the_clear() -> None:
    driver = Driver(OFFERED, policy={StartTLS: replies.TLS_NOT_AVAILABLE})
    ehlo_session(driver)
    out = driver.feed(b"STARTTLS\r\nMAIL FROM:<a@example.test>\r\n")
    assert first_lines(out) == [
        "454 4.7.0 TLS not available due to temporary reason",
        "250 2.1.0 Ok",
    ]
    assert not driver.conn.tls_active
    assert driver.conn.state is State.MAIL


# -- after the handshake ----------------------------------------------------------------------


def test_the_session_forgets_the_ehlo() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"STARTTLS\r\n")
    conn = driver.conn
    assert conn.state is State.START
    assert conn.helo_name == ""
    assert not conn.extended
    out = driver.feed(b"MAIL FROM:<a@example.test>\r\n")
    assert first_lines(out) == ["503 Send HELO/EHLO first"]  # no enhanced codes yet


def test_a_new_ehlo_after_tls_starts_a_session() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"STARTTLS\r\n")
    driver.feed(b"EHLO secure.test\r\n")
    assert driver.conn.helo_name == "secure.test"
    assert driver.conn.extended
    out = driver.feed(b"MAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\n")
    assert first_lines(out) == ["250 2.1.0 Ok", "250 2.1.5 Ok"]


def test_the_core_reads_nothing_until_the_handshake_is_done() -> None:
    conn = waiting_for_handshake()
    assert conn.next_event() is PAUSED
    assert not conn.is_idle  # no 421 in the clear into a handshake
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() is PAUSED
    assert conn.buffered == 0


def test_tls_started_without_starttls_is_a_program_error() -> None:
    driver = ehlo_session(offered())
    with pytest.raises(RuntimeError):
        driver.conn.tls_started()


def test_counts_survive_the_handshake() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"BOGUS\r\n")
    driver.feed(b"STARTTLS\r\n")
    assert driver.conn.errors == 1  # STARTTLS cannot wipe a client's record


# -- the injection defence (CVE-2011-0411) ----------------------------------------------------


def test_commands_pipelined_after_starttls_are_discarded() -> None:
    driver = Driver(OFFERED, handshake=False)
    out = driver.greeting()
    out += driver.feed(INJECTION)
    conn = driver.conn
    assert kinds(driver.events) == ["Hello", "StartTLS"]
    assert first_lines(out)[-1] == READY
    assert codes(out) == [220, 250, 220]  # greeting, EHLO, STARTTLS: no RSET, no MAIL
    assert conn.buffered == 0
    conn.tls_started()
    driver.events.clear()
    out = driver.feed(b"EHLO x\r\n")
    assert kinds(driver.events) == ["Hello"]
    assert replies_of(out) == [EHLO_WITHOUT]
    # The injected MAIL never ran: a MAIL now is the first of the session.
    out = driver.feed(b"MAIL FROM:<good@example.test>\r\n")
    assert first_lines(out) == ["250 2.1.0 Ok"]
    (mail,) = [e for e in driver.events if isinstance(e, MailFrom)]
    assert mail.sender is not None
    assert mail.sender.local_part == "good"


def test_bytes_arriving_during_the_handshake_are_discarded() -> None:
    conn = waiting_for_handshake()
    conn.data_to_send()
    conn.receive_data(b"MAIL FROM:<evil@x>\r\n")
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""


def test_a_half_line_before_starttls_does_not_join_the_next_command() -> None:
    # "STARTTLS\r\nMAIL FR" then, after TLS, "OM:<a@b>\r\n" must not become a MAIL.
    conn = waiting_for_handshake(b"EHLO client.test\r\nSTARTTLS\r\nMAIL FR")
    conn.tls_started()
    conn.data_to_send()
    conn.receive_data(b"OM:<a@example.test>\r\n")
    assert conn.next_event() is NEED_DATA
    assert codes(conn.data_to_send()) == [500]


@given(st.binary(max_size=400))
def test_nothing_after_starttls_in_the_same_chunk_is_ever_a_command(tail: bytes) -> None:
    conn = ServerConnection(OFFERED, client_address=CLIENT_IP)
    conn.start()
    conn.receive_data(b"EHLO client.test\r\nSTARTTLS\r\n" + tail)
    events: list[Event] = []
    while True:
        event = conn.next_event()
        if event is PAUSED and conn.state is State.TLS:
            break
        assert isinstance(event, Event)
        events.append(event)
        conn.accept()
    assert [type(e) for e in events] == [Hello, StartTLS]
    assert codes(conn.data_to_send()) == [220, 250, 220]
    conn.tls_started()
    assert conn.next_event() is NEED_DATA
    assert conn.data_to_send() == b""


def test_reset_events_are_not_produced_by_the_handshake() -> None:
    driver = ehlo_session(offered())
    driver.feed(b"STARTTLS\r\n")
    assert not any(isinstance(e, Reset) for e in driver.events)


_TOKENS = [
    b"EHLO c.test\r\n",
    b"HELO c.test\r\n",
    b"STARTTLS\r\n",
    b"STARTTLS x\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"RCPT TO:<c@d.test>\r\n",
    b"DATA\r\n",
    b"text\r\n.\r\n",
    b"RSET\r\n",
    b"HELP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\n",
    b"x" * 600,
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(
        st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=20)), max_size=12).map(
            b"".join
        ),
        max_size=8,
    ),
    handshake=st.booleans(),
    tls=st.booleans(),
)
def test_any_input_with_starttls_never_raises(
    chunks: list[bytes], handshake: bool, tls: bool
) -> None:
    driver = Driver(OFFERED, handshake=handshake, tls=tls)
    out = driver.greeting()
    for chunk in chunks:
        out += driver.feed(chunk)
    reply_lines(out)  # every line well formed
    if driver.conn.state is State.TLS:
        assert driver.conn.next_event() is PAUSED
        assert driver.conn.buffered == 0
