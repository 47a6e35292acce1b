"""HELP lists the optional commands a session offers, as its EHLO reply does, and explains
only those; the classic commands are always there."""

from __future__ import annotations

import pytest

from tests.smtp_helpers import codes, converse, reply_lines, settings


def help_reply(**offered: object) -> list[str]:
    _, out = converse(b"EHLO client.test\r\nHELP\r\n", settings(**offered))
    return [line for line in reply_lines(out) if line.startswith("214")]


def test_the_classic_commands_are_always_listed() -> None:
    (_, names, *_) = help_reply()
    listed = names.removeprefix("214-").split()
    for command in ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP"):
        assert command in listed
    for command in ("VRFY", "EXPN", "SEND", "SOML", "SAML", "TURN"):
        assert command in listed
    for command in ("STARTTLS", "AUTH", "BDAT", "ETRN", "ATRN"):
        assert command not in listed


def test_offered_extensions_are_listed() -> None:
    (_, names, *_) = help_reply(
        chunking=True, etrn=True, auth_mechanisms=("PLAIN",), auth_plaintext=True, atrn=True
    )
    listed = names.removeprefix("214-").split()
    assert {"BDAT", "ETRN", "AUTH", "ATRN"} <= set(listed)
    assert "STARTTLS" not in listed


@pytest.mark.parametrize(("command", "code"), [("ETRN", 504), ("BDAT", 214), ("AUTH", 504)])
def test_help_explains_only_what_is_offered(command: str, code: int) -> None:
    _, out = converse(f"EHLO client.test\r\nHELP {command}\r\n".encode(), settings(chunking=True))
    assert codes(out)[-1] == code
