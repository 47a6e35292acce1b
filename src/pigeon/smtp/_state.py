"""The server state machine: everything that affects which command may come when lives here.

RFC 5321 section 4.1.4 gives the order: a session opens with HELO or EHLO; a mail transaction
is MAIL, one or more RCPT, then DATA; RSET, HELO and EHLO abort a transaction; NOOP, HELP,
VRFY, EXPN and QUIT may come at any time. SEND, SOML and SAML (RFC 821 section 3.5) start a
transaction exactly as MAIL does.

STARTTLS (RFC 3207) comes after EHLO and outside a transaction, once per session: after its
220 the core is in TLS, reading nothing, until the program says the handshake is done; then
the session starts again from START, having forgotten everything the client said before
(section 4.2), and STARTTLS is out of sequence for the rest of it.

AUTH (RFC 4954) comes after EHLO and outside a transaction; while a SASL exchange is under
way (after a 334 challenge) the session is in AUTH, where each line is the client's response.
"""

from __future__ import annotations

import enum

from . import _replies as replies
from ._replies import Reply

__all__ = ["SEQUENCE", "State", "in_sequence", "sequence_error"]


class State(enum.Enum):
    GREETING = "greeting"  # connected, greeting not yet sent
    START = "start"  # greeted, waiting for HELO/EHLO
    READY = "ready"  # introduced, no transaction
    MAIL = "mail"  # reverse-path accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message text
    CHUNK = "chunk"  # reading the octets of a BDAT chunk (RFC 3030)
    BDAT = "bdat"  # between the chunks of a message sent with BDAT
    TLS = "tls"  # 220 sent to STARTTLS: nothing is read until the TLS handshake is done
    AUTH = "auth"  # 334 sent: the next line is a SASL response, not a command
    TURNED = "turned"  # TURN/ATRN answered 250: the connection is the program's, as a client
    CLOSED = "closed"


# RSET, HELO and EHLO abort a BDAT transaction between chunks as they abort any other.
_ANY = frozenset({State.START, State.READY, State.MAIL, State.RCPT, State.BDAT})
_TRANSACTION_START = frozenset({State.READY})

# verb -> states in which it is in sequence.
SEQUENCE: dict[str, frozenset[State]] = {
    "HELO": _ANY,
    "EHLO": _ANY,
    "MAIL": _TRANSACTION_START,
    "SEND": _TRANSACTION_START,
    "SOML": _TRANSACTION_START,
    "SAML": _TRANSACTION_START,
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "HELP": _ANY,
    "VRFY": _ANY,
    "EXPN": _ANY,
    "TURN": frozenset({State.READY}),
    "ATRN": frozenset({State.READY}),
    # RFC 1985: outside a mail transaction.
    "ETRN": frozenset({State.READY}),
    "STARTTLS": frozenset({State.READY}),
    # RFC 4954 section 4: after EHLO, never during a mail transaction.
    "AUTH": frozenset({State.READY}),
}


def in_sequence(verb: str, state: State, *, tls_active: bool) -> bool:
    if verb == "STARTTLS" and tls_active:
        return False  # RFC 3207 section 4.2: one TLS negotiation per session
    allowed = SEQUENCE.get(verb)
    return allowed is None or state in allowed


def sequence_error(
    verb: str, state: State, *, recipients_refused: bool, tls_active: bool = False
) -> Reply:
    """The 503 (or 554) reply for ``verb`` arriving in ``state``, saying what was expected."""
    if state is State.BDAT and verb in ("DATA", "RCPT"):
        # RFC 3030 section 3: a transaction begun with BDAT ends with BDAT ... LAST.
        return replies.bad_sequence(f"{verb} not allowed during a BDAT transaction")
    if verb == "STARTTLS":
        if tls_active:
            return replies.bad_sequence("TLS already active")
        if state is State.START:
            return replies.bad_sequence("Send EHLO first")
        return replies.bad_sequence("Mail transaction in progress; send RSET first")
    if verb == "AUTH":
        if state is State.START:
            return replies.bad_sequence("Send EHLO first")
        return replies.bad_sequence("AUTH not permitted during a mail transaction")
    if verb in ("MAIL", "SEND", "SOML", "SAML", "TURN"):
        if state is State.START:
            return replies.bad_sequence("Send HELO/EHLO first")
        return replies.bad_sequence("Nested MAIL command")
    if verb == "RCPT":
        if state is State.START:
            return replies.bad_sequence("Send HELO/EHLO first")
        return replies.bad_sequence("Need MAIL command before RCPT")
    if verb in ("DATA", "BDAT"):
        if state is State.MAIL:
            # RFC 5321 section 3.3: after MAIL whose every RCPT was refused, DATA may get
            # 554 "no valid recipients"; without any RCPT at all it is out of sequence.
            if recipients_refused:
                return replies.NO_VALID_RECIPIENTS
            return replies.bad_sequence(f"Need RCPT command before {verb}")
        if state is State.START:
            return replies.bad_sequence("Send HELO/EHLO first")
        return replies.bad_sequence(f"Need MAIL command before {verb}")
    return replies.bad_sequence("Bad sequence of commands")
