"""Parsing of command arguments: paths (RFC 5321 section 4.1.2) and ESMTP parameters.

Every function either returns what it parsed or raises ``CommandError`` carrying the reply
the client must get. ``classic`` turns on what RFC 821-era clients send and RFC 5321 forbids:
a path without angle brackets and RFC 822 comments inside it.
"""

from __future__ import annotations

import ipaddress

from . import _replies as replies
from ._abnf import ADL_RE, DOMAIN_RE, ESMTP_PARAM_RE, MAILBOX_RE, MAILBOX_UTF8_RE
from ._events import Address
from ._idna import to_ascii_domain
from ._replies import Reply

__all__ = ["CommandError", "ParsedPath", "parse_parameters", "parse_path", "valid_domain"]

# RFC 5321 section 4.5.3.1.3: the maximum total length of a reverse-path or forward-path is
# 256 octets, including the punctuation and element separators.
MAX_PATH = 256


class CommandError(Exception):
    """The client's command was wrong; ``reply`` says how."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class ParsedPath:
    __slots__ = ("address", "raw", "rest", "route")

    def __init__(
        self, address: Address | None, route: tuple[str, ...], raw: str, rest: str
    ) -> None:
        self.address = address
        self.route = route
        self.raw = raw
        self.rest = rest


def parse_path(
    argument: str, *, keyword: str, for_recipient: bool, classic: bool, utf8: bool = False
) -> ParsedPath:
    """Parse ``FROM:<path> params`` (or ``TO:``); ``keyword`` is "FROM" or "TO". With
    ``utf8`` the address may hold UTF-8 (RFC 6531); whether it may be used is the caller's
    decision, since it depends on the MAIL command's SMTPUTF8 parameter."""
    verb = "RCPT" if for_recipient else "MAIL"
    head, colon, tail = argument.partition(":")
    if not colon or head.strip().upper() != keyword:
        raise CommandError(_usage(verb, keyword))
    # "MAIL FROM: <a@b>" is not RFC 5321 but is what many clients send; accept it, as Postfix
    # and Exim do, since it is unambiguous.
    tail = tail.lstrip(" ")
    if tail.startswith("<"):
        close = _closing_bracket(tail)
        if close < 0:
            raise CommandError(replies.syntax(f"Syntax: {verb} {keyword}:<address>: missing '>'"))
        raw, inner, rest = tail[: close + 1], tail[1:close], tail[close + 1 :]
    elif classic and tail:
        raw, _, rest = tail.partition(" ")
        rest = " " + rest if rest else ""
        inner = raw
    else:
        raise CommandError(
            replies.syntax(f"Syntax: {verb} {keyword}:<address>: the address must be in <>")
        )
    if rest and not rest.startswith(" "):
        raise CommandError(_usage(verb, keyword))
    if _has_comment(inner):
        if not classic:
            raise CommandError(
                replies.syntax("Syntax: comments are not allowed in a path (RFC 5321 4.1.2)")
            )
        inner = _strip_comments(inner).strip()
    if len(inner) + 2 > MAX_PATH:
        raise CommandError(replies.syntax("Path too long (RFC 5321 4.5.3.1.3)"))

    bad = replies.BAD_RECIPIENT_SYNTAX if for_recipient else replies.BAD_SENDER_SYNTAX
    if inner == "":
        if for_recipient:
            raise CommandError(bad)
        return ParsedPath(None, (), raw, rest)
    if for_recipient and inner.lower() == "postmaster":
        return ParsedPath(Address(inner, ""), (), raw, rest)
    route: tuple[str, ...] = ()
    if inner.startswith("@"):
        adl, colon, inner = inner.partition(":")
        if not colon or not ADL_RE.fullmatch(adl):
            raise CommandError(bad)
        route = tuple(hop[1:] for hop in adl.split(","))
    address = parse_mailbox(inner, utf8=utf8)
    if address is None:
        raise CommandError(bad)
    return ParsedPath(address, route, raw, rest)


def _usage(verb: str, keyword: str) -> Reply:
    return replies.syntax(f"Syntax: {verb} {keyword}:<address> [parameters]")


def parse_mailbox(text: str, *, utf8: bool = False) -> Address | None:
    """``Mailbox = Local-part "@" ( Domain / address-literal )``, or None if it is not one.

    ``utf8`` takes RFC 6531's grammar: UTF-8 in the local part, U-labels in the domain."""
    match = (MAILBOX_UTF8_RE if utf8 else MAILBOX_RE).fullmatch(text)
    if match is None:
        return None
    local, domain = match.group("local"), match.group("domain")
    if domain.startswith("[") and not _valid_address_literal(domain[1:-1]):
        return None
    if not domain.startswith("["):
        # A U-label must be valid IDNA, and the name's length counts in A-labels.
        ascii_domain = to_ascii_domain(domain)
        if ascii_domain is None or len(ascii_domain) > 255:
            return None
    if local.startswith('"'):
        local = _unquote(local)
    return Address(local, domain)


def valid_domain(text: str) -> bool:
    """A Domain or an address-literal, as HELO and EHLO take (RFC 5321 section 4.1.1.1)."""
    if text.startswith("[") and text.endswith("]"):
        return _valid_address_literal(text[1:-1])
    return len(text) <= 255 and DOMAIN_RE.fullmatch(text) is not None


def parse_parameters(text: str) -> dict[str, str | None]:
    """``Mail-parameters = esmtp-param *(SP esmtp-param)``; keywords are case-insensitive."""
    parameters: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue  # tolerate doubled spaces: harmless and common
        match = ESMTP_PARAM_RE.fullmatch(token)
        if match is None:
            raise CommandError(replies.syntax(f"Bad parameter syntax: {_printable(token)}"))
        keyword = match.group("keyword").upper()
        if keyword in parameters:
            raise CommandError(replies.syntax(f"Parameter {keyword} given twice"))
        parameters[keyword] = match.group("value")
    return parameters


def _valid_address_literal(body: str) -> bool:
    # IPv4-address-literal  = Snum 3("."  Snum)
    # IPv6-address-literal  = "IPv6:" IPv6-addr
    # General-address-literal  = Standardized-tag ":" 1*dcontent
    if body[:5].upper() == "IPV6:":
        if "%" in body:
            return False  # ipaddress accepts a scoped address ("fe80::1%eth0"); 5321 does not
        try:
            ipaddress.IPv6Address(body[5:])
        except ValueError:
            return False
        return True
    if ":" in body:
        tag, _, content = body.partition(":")
        return bool(tag) and bool(content) and DOMAIN_RE.fullmatch(tag) is not None
    try:
        ipaddress.IPv4Address(body)
    except ValueError:
        return False
    return True


def _unquote(quoted: str) -> str:
    out = []
    chars = iter(quoted[1:-1])
    for char in chars:
        out.append(next(chars) if char == "\\" else char)
    return "".join(out)


def _closing_bracket(text: str) -> int:
    """Index of the ">" that closes the path at text[0], skipping quoted strings and comments."""
    close = text.find(">")
    if close > 0:
        before = text[:close]
        if '"' not in before and "(" not in before and "\\" not in before:
            return close  # the usual path: nothing before its ">" to skip
    in_quotes = False
    depth = 0
    index = 1
    while index < len(text):
        char = text[index]
        if char == "\\" and (in_quotes or depth):
            index += 2
            continue
        if in_quotes:
            in_quotes = char != '"'
        elif char == '"' and not depth:
            in_quotes = True
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char == ">" and not depth:
            return index
        index += 1
    return -1


def _has_comment(text: str) -> bool:
    return "(" in text and "(" in _strip_quoted(text)


def _strip_quoted(text: str) -> str:
    out = []
    in_quotes = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif not in_quotes:
            out.append(char)
    return "".join(out)


def _strip_comments(text: str) -> str:
    """Remove RFC 822 comments ``( ... )``, which nest and may hold quoted pairs."""
    out = []
    depth = 0
    in_quotes = False
    escaped = False
    for char in text:
        if escaped:
            escaped = False
            if not depth:
                out.append(char)
            continue
        if char == "\\":
            escaped = True
            if not depth:
                out.append(char)
        elif in_quotes:
            in_quotes = char != '"'
            out.append(char)
        elif char == '"' and not depth:
            in_quotes = True
            out.append(char)
        elif char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(char)
    return "".join(out)


def _printable(text: str, limit: int = 40) -> str:
    """Echo client text safely: printable ASCII only, and not too much of it."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")
