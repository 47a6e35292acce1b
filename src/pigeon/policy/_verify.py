from __future__ import annotations

from pigeon.directory import Alias, Directory, Forward, Mailbox, MailingList, Moved, Route
from pigeon.smtp import Reply, parse_mailbox, replies

__all__ = ["EXPN_LIMIT", "VerifyPolicy"]

# An EXPN reply lists at most this many members and then says how many it left out: a list
# of ten thousand must not become a ten-thousand-line reply (or a harvest of addresses).
EXPN_LIMIT = 100


class VerifyPolicy:
    """VRFY and EXPN, per listener (RFC 5321 sections 3.5 and 7.3).

    ``vrfy``: "hidden" answers 252 without looking, so that address harvesters learn nothing
    while honest clients are told the mail will be tried (the RFC's advice); "off" answers
    502; "on" answers from the directory; "authenticated" answers from the directory to
    clients that have authenticated and as "hidden" to the rest. ``expn`` likewise with "off"
    in place of "hidden".
    """

    def __init__(self, directory: Directory, *, vrfy: str, expn: str) -> None:
        self._directory = directory
        self._vrfy = vrfy
        self._expn = expn

    # -- VRFY -----------------------------------------------------------------------------------
    def verify(self, argument: str, *, authenticated: bool = False) -> Reply:
        policy = self._vrfy
        if policy == "authenticated":
            policy = "on" if authenticated else "hidden"
        if policy == "off":
            return replies.NOT_IMPLEMENTED
        if policy == "hidden":
            return replies.CANNOT_VRFY
        text = _unbracket(argument)
        if "@" in text:
            address = parse_mailbox(text)
            if address is None:
                return replies.syntax("VRFY: not an address")
            route = self._directory.route(address.local_part, address.domain)
            found = [] if route is None else [route]
        else:
            found = self._directory.candidates(text)
        if not found:
            return Reply.of(550, f"{text}: no such user here", "5.1.1")
        if len(found) > 1:
            lines = ["Ambiguous; possibilities are:"]
            lines += [_described(route) for route in found]
            return Reply(553, tuple(lines), "5.1.4")
        return _verified(found[0])

    # -- EXPN -----------------------------------------------------------------------------------
    def expand(self, argument: str, *, authenticated: bool = False) -> Reply:
        policy = self._expn
        if policy == "authenticated":
            policy = "on" if authenticated else "off"
        if policy == "off":
            return replies.NOT_IMPLEMENTED
        text = _unbracket(argument)
        route = self._list_named(text)
        if not isinstance(route, MailingList | Alias):
            return Reply.of(550, f"{text}: no such mailing list here", "5.1.1")
        members = route.members if isinstance(route, MailingList) else route.targets
        if not members:
            return Reply.of(250, f"{route.address} has no members", "2.1.5")
        shown = [self._member(m) for m in members[:EXPN_LIMIT]]
        if len(members) > EXPN_LIMIT:
            shown.append(f"(and {len(members) - EXPN_LIMIT} more members, not shown)")
        return Reply(250, tuple(shown), "2.1.5")

    def _list_named(self, text: str) -> Route | None:
        if "@" in text:
            address = parse_mailbox(text)
            if address is None or not self._directory.serves(address.domain):
                return None
            return self._directory.route(address.local_part, address.domain)
        lists = [r for r in self._directory.candidates(text) if isinstance(r, MailingList | Alias)]
        return lists[0] if len(lists) == 1 else None

    def _member(self, address: str) -> str:
        """A member as EXPN shows it: with the full name when it is one of our users."""
        local, _, domain = address.rpartition("@")
        mailbox = self._directory.find(local, domain) if self._directory.serves(domain) else None
        if mailbox is not None and mailbox.name:
            return f"{mailbox.name} <{address}>"
        return f"<{address}>"


def _unbracket(argument: str) -> str:
    text = argument.strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def _described(route: Route) -> str:
    if isinstance(route, Mailbox) and route.name:
        return f"{route.name} <{route.address}>"
    return f"<{route.address}>"


def _verified(route: Route) -> Reply:
    if isinstance(route, Moved):
        return Reply.of(551, f"User not local; please try <{route.new_address}>", "5.1.6")
    if isinstance(route, Forward):
        targets = ", ".join(f"<{t}>" for t in route.targets[:3])
        return Reply.of(251, f"User not local; will forward to {targets}", "2.1.5")
    return Reply.of(250, _described(route), "2.1.5")
