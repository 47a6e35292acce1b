from __future__ import annotations

from pigeon.directory import Directory
from pigeon.smtp import Reply, parse_mailbox, replies

__all__ = ["VerifyPolicy"]


class VerifyPolicy:
    """VRFY and EXPN, per listener (RFC 5321 section 3.5.3).

    VRFY "hidden" answers 252 without looking, so that address harvesters learn nothing while
    honest clients are told the mail will be tried (the RFC's advice); "off" answers 502;
    "on" answers from the directory. EXPN is "off" (502) unless turned "on".
    """

    def __init__(self, directory: Directory, *, vrfy: str, expn: str) -> None:
        self._directory = directory
        self._vrfy = vrfy
        self._expn = expn

    def verify(self, argument: str) -> Reply:
        if self._vrfy == "off":
            return replies.NOT_IMPLEMENTED
        if self._vrfy == "hidden":
            return replies.CANNOT_VRFY
        text = argument[1:-1] if argument.startswith("<") and argument.endswith(">") else argument
        if "@" in text:
            address = parse_mailbox(text)
            if address is None:
                return replies.syntax("VRFY: not an address")
            found = [self._directory.find(address.local_part, address.domain)]
        else:
            found = [self._directory.find(text, domain) for domain in self._directory.domains]
        mailboxes = [m for m in found if m is not None]
        if not mailboxes:
            return Reply.of(550, f"{text}: no such user here", "5.1.1")
        if len(mailboxes) > 1:
            lines = ["Ambiguous; possibilities are:"]
            lines += [f"<{m.address}>" for m in mailboxes]
            return Reply(553, tuple(lines), "5.1.4")
        return Reply.of(250, f"<{mailboxes[0].address}>", "2.1.5")

    def expand(self, argument: str) -> Reply:
        if self._expn == "off":
            return replies.NOT_IMPLEMENTED
        # Mailing lists arrive with the directory issue; until then no name is a list.
        return Reply.of(550, "No such mailing list here", "5.1.1")
