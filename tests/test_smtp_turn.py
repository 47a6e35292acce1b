"""ETRN (RFC 1985), ATRN (RFC 2645) and TURN in the protocol core, with no sockets."""

from __future__ import annotations

import pytest

from pigeon.smtp import PAUSED, Etrn, Reply, ServerConnection, State, Turn
from tests.smtp_helpers import Driver, codes, ehlo_session, first_lines, settings

SASL_OK = Reply.of(235, "Authentication successful", "2.7.0")


def ehlo_lines(driver: Driver) -> list[str]:
    out = driver.feed(b"EHLO client.example.test\r\n")
    return [line[4:] for line in out.decode().splitlines()]


def test_ehlo_lists_etrn_and_atrn_only_when_offered() -> None:
    plain = ehlo_lines(Driver(settings()))
    assert "ETRN" not in plain
    assert "ATRN" not in plain
    offered = ehlo_lines(
        Driver(settings(etrn=True, atrn=True, auth_mechanisms=("PLAIN",), auth_plaintext=True))
    )
    assert "ETRN" in offered
    assert "ATRN" in offered
    # ATRN goes with AUTH (RFC 2645 section 4): none where AUTH is not offered.
    assert "ATRN" not in ehlo_lines(Driver(settings(atrn=True)))
    for line in (*plain, *offered):
        assert line not in ("SEND", "SOML", "SAML", "TURN")


@pytest.mark.parametrize(
    ("line", "node", "option"),
    [
        (b"ETRN remote.test", "remote.test", ""),
        (b"ETRN @Remote.Test", "remote.test", "@"),
        (b"ETRN #Queue1", "Queue1", "#"),
        (b"etrn   remote.test", "remote.test", ""),
    ],
)
def test_etrn_event(line: bytes, node: str, option: str) -> None:
    driver = ehlo_session(Driver(settings(etrn=True), policy={Etrn: Reply.of(251, "none")}))
    assert codes(driver.feed(line + b"\r\n")) == [251]
    assert driver.events == [Etrn(node, option)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line", [b"ETRN", b"ETRN @", b"ETRN #", b"ETRN a b", b"ETRN [192.0.2.1]", b"ETRN bad_name!"]
)
def test_etrn_syntax_errors(line: bytes) -> None:
    driver = ehlo_session(Driver(settings(etrn=True)))
    assert codes(driver.feed(line + b"\r\n")) == [501]
    assert driver.events == []


def test_etrn_not_offered_and_out_of_sequence() -> None:
    assert codes(ehlo_session(Driver(settings())).feed(b"ETRN remote.test\r\n")) == [502]
    driver = ehlo_session(Driver(settings(etrn=True)))
    out = driver.feed(b"MAIL FROM:<a@example.test>\r\nETRN remote.test\r\n")
    assert codes(out) == [250, 503]


def test_atrn_needs_authentication() -> None:
    driver = ehlo_session(Driver(settings(atrn=True, auth_mechanisms=("PLAIN",))))
    assert first_lines(driver.feed(b"ATRN customer.test\r\n")) == [
        "530 5.7.0 Authentication required"
    ]
    assert driver.events == []


def authenticated(atrn: bool = True) -> ServerConnection:
    conn = ServerConnection(
        settings(atrn=atrn, auth_mechanisms=("PLAIN",), auth_plaintext=True), client_address="x"
    )
    conn.start()
    conn.receive_data(b"EHLO client.example.test\r\nAUTH PLAIN AGN1c3QAc2VjcmV0\r\n")
    assert conn.next_event().__class__.__name__ == "Hello"
    conn.accept()
    assert conn.next_event().__class__.__name__ == "Auth"
    conn.respond(SASL_OK)
    conn.data_to_send()
    return conn


def test_atrn_domains_and_the_turn() -> None:
    conn = authenticated()
    conn.receive_data(b"ATRN Customer.test,other.test\r\nNOOP\r\n")
    event = conn.next_event()
    assert event == Turn(verb="ATRN", domains=("customer.test", "other.test"))
    conn.respond(Reply.of(250, "OK now reversing the connection", "2.0.0"))
    assert conn.data_to_send() == b"250 2.0.0 OK now reversing the connection\r\n"
    # The roles have reversed: the pipelined NOOP and what follows are not commands now.
    assert conn.state is State.TURNED
    conn.receive_data(b"220 customer.test ready\r\n")
    assert conn.next_event() is PAUSED
    assert conn.data_to_send() == b""


def test_atrn_refused_keeps_the_session() -> None:
    conn = authenticated()
    conn.receive_data(b"ATRN\r\n")
    assert conn.next_event() == Turn(verb="ATRN", domains=())
    conn.respond(Reply.of(453, "You have no mail", "4.3.2"))
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event().__class__.__name__ != "Turn"
    assert conn.data_to_send().startswith(b"453 4.3.2 You have no mail\r\n250")


@pytest.mark.parametrize("line", [b"ATRN ,", b"ATRN a..b", b"ATRN [192.0.2.1]", b"ATRN a,,b"])
def test_atrn_syntax_errors(line: bytes) -> None:
    conn = authenticated()
    conn.receive_data(line + b"\r\n")
    conn.next_event()
    assert conn.data_to_send().startswith(b"501 ")


def test_turn_is_still_an_event_for_the_program() -> None:
    driver = ehlo_session(Driver(settings()))
    assert codes(driver.feed(b"TURN\r\n")) == [502]
    assert driver.events == [Turn()]
