"""The DSN extension's parameters (RFC 3461 section 4): RET and ENVID on MAIL, NOTIFY and
ORCPT on RCPT. Each is checked here and kept as received (xtext stays encoded: it is passed
on to the next hop as it came, and decoded only for a report)."""

from __future__ import annotations

import re

from . import _replies as replies
from ._grammar import CommandError

__all__ = ["check_mail_dsn", "check_rcpt_parameters"]

# xtext = *( xchar / hexchar ); xchar is "!" to "~" except "+" and "="; hexchar is "+" and
# two upper-case hexadecimal digits.
_XTEXT = r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*"
_XTEXT_RE = re.compile(_XTEXT)
# ORCPT = addr-type ";" xtext, addr-type an atom (RFC 3461 section 4.2); "rfc822" and
# "utf-8" (RFC 6533) are the types in use.
_ORCPT_RE = re.compile(rf"[A-Za-z0-9!#$%&'*+\-/=?^_`{{|}}~]+;(?P<address>{_XTEXT})")
_NOTIFY_EVENTS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_MAX_ENVID = 100  # octets, RFC 3461 section 4.4
_MAX_ORCPT_ADDRESS = 500  # octets of xtext; the decoded address is at most 256 octets


def check_mail_dsn(keyword: str, value: str | None) -> str:
    """RET or ENVID of a MAIL command, normalised (RET upper-cased); raises CommandError."""
    if keyword == "RET":
        ret = (value or "").upper()
        if ret not in ("FULL", "HDRS"):
            raise CommandError(replies.syntax("RET takes FULL or HDRS"))
        return ret
    if value is None or not value or not _XTEXT_RE.fullmatch(value):
        raise CommandError(replies.syntax("ENVID takes an xtext value (RFC 3461)"))
    if len(value) > _MAX_ENVID:
        raise CommandError(replies.syntax(f"ENVID is longer than {_MAX_ENVID} characters"))
    return value


def check_rcpt_parameters(parameters: dict[str, str | None], *, dsn: bool) -> dict[str, str | None]:
    """The RCPT parameters this server knows (NOTIFY and ORCPT when DSN is offered),
    normalised; raises CommandError for others and for bad values."""
    for keyword, value in parameters.items():
        if not dsn or keyword not in ("NOTIFY", "ORCPT"):
            raise CommandError(replies.PARAMETERS_NOT_RECOGNIZED)
        if keyword == "NOTIFY":
            parameters[keyword] = _check_notify(value)
        elif (
            value is None
            or (match := _ORCPT_RE.fullmatch(value)) is None
            or not match.group("address")
            or len(match.group("address")) > _MAX_ORCPT_ADDRESS
        ):
            raise CommandError(replies.syntax("ORCPT takes addr-type;xtext (RFC 3461)"))
    return parameters


def _check_notify(value: str | None) -> str:
    events = [e.strip().upper() for e in (value or "").split(",")]
    if events == ["NEVER"]:
        return "NEVER"
    if (
        not events
        or any(e not in _NOTIFY_EVENTS for e in events)
        or len(set(events)) != len(events)
    ):
        raise CommandError(
            replies.syntax("NOTIFY takes NEVER, or SUCCESS, FAILURE and DELAY separated by commas")
        )
    return ",".join(events)
