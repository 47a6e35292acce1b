from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pigeon.config import DomainConfig

__all__ = ["Directory", "Mailbox"]

# A catch-all domain turns any local part into a directory name, so only names that are
# safe as one are accepted: no "/", no leading dot, nothing a shell or Maildir would trip on.
_SAFE_MAILBOX_NAME = re.compile(r"[a-z0-9_][a-z0-9._+=-]{0,63}")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A local user's mailbox: its owner and the Maildir it is kept in."""

    user: str
    domain: str
    path: Path

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"


class Directory:
    """Domains and users. Every served domain also has ``postmaster`` (RFC 5321 4.5.1)."""

    def __init__(self, domains: Mapping[str, DomainConfig], *, mail_root: Path) -> None:
        self._domains = {name.lower(): spec for name, spec in domains.items()}
        self._users = {
            name: {user.lower(): user for user in spec.users}
            for name, spec in self._domains.items()
        }
        self._mail_root = mail_root

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._domains)

    @property
    def primary_domain(self) -> str | None:
        """Where a bare ``<postmaster>`` goes: the first domain served (None: a relay only)."""
        return next(iter(self._domains), None)

    def serves(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def find(self, local_part: str, domain: str) -> Mailbox | None:
        """The mailbox of ``local_part@domain``, or None when no such user exists here."""
        domain = domain.lower()
        spec = self._domains.get(domain)
        if spec is None:
            return None
        key = local_part.lower()
        user = self._users[domain].get(key)
        if user is None and key == "postmaster":
            user = "postmaster"
        if user is None and spec.catch_all and _SAFE_MAILBOX_NAME.fullmatch(key):
            user = key
        if user is None:
            return None
        return Mailbox(user, domain, self._mail_root / domain / user)

    def describe(self) -> list[str]:
        """One line per domain saying who receives mail there, for the startup banner."""
        lines = []
        for domain, spec in self._domains.items():
            who = "any local part" if spec.catch_all else ", ".join([*spec.users, "postmaster"])
            lines.append(f"{domain}: {who} -> {self._mail_root / domain}/<user>/ (Maildir)")
        return lines
