from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pigeon.config import Config, DomainConfig, ListConfig, UserConfig
from pigeon.smtp import domain_key

from ._names import canonical_address
from ._names import user_key as _user_key
from ._store import DirectoryStore, Entry

__all__ = ["Alias", "Directory", "Forward", "Mailbox", "MailingList", "Moved", "Route"]

# A catch-all domain turns any local part into a directory name, so only names that are
# safe as one are accepted: no "/", no leading dot, nothing a shell or Maildir would trip on.
# ASCII only: a UTF-8 local part (SMTPUTF8) has a mailbox when it is listed as a user, never
# made up by a catch-all, where look-alike letters of other scripts would open new mailboxes.
_SAFE_MAILBOX_NAME = re.compile(r"[a-z0-9_][a-z0-9._+=-]{0,63}")


# Joining paths is slow for what it does, and every RCPT and every delivery asks for the
# same few mailboxes: the recent ones are kept (bounded: catch-all makes any name a mailbox).
@lru_cache(maxsize=4096)
def _maildir_path(root: Path, domain: str, user: str) -> Path:
    return root / domain / user


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A local user's mailbox: its owner and the Maildir it is kept in."""

    user: str
    domain: str
    path: Path
    name: str = ""  # the user's full name, for VRFY
    quota: int = 0  # octets; 0: no limit

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Alias:
    """An address that stands for others (local or not); mail to it goes to all of them."""

    address: str
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Forward:
    """A user whose mail goes on to other addresses (RFC 5321 3.4: 251 "will forward")."""

    address: str
    targets: tuple[str, ...]
    mailbox: Mailbox | None = None  # set when the user also keeps a copy here


@dataclass(frozen=True, slots=True)
class Moved:
    """A user who has moved: mail is refused with their new address (551 "please try")."""

    address: str
    new_address: str


@dataclass(frozen=True, slots=True)
class MailingList:
    address: str
    members: tuple[str, ...]
    owner: str
    posting: str = "anyone"  # anyone, members or owner

    def may_post(self, sender: str) -> bool:
        if self.posting == "anyone":
            return True
        sender_key = sender.lower()
        if sender_key == self.owner.lower():
            return True
        return self.posting == "members" and sender_key in {m.lower() for m in self.members}


Route = Mailbox | Alias | Forward | Moved | MailingList

_NO_ENTRY = Entry((), None, None)


@dataclass(slots=True)
class _Domain:
    name: str  # as configured: it names the domain's mail directory
    spec: DomainConfig
    users: dict[str, str] = field(default_factory=dict)  # user key -> user name


class Directory:
    """Domains, users, aliases, forwards and mailing lists: where an address leads.

    Every served domain also has ``postmaster`` (RFC 5321 4.5.1). Entries come from the
    configuration and from the directory store (``store``, read at each lookup, so its changes
    are seen at once). ``user_exists``, when given, is asked about local parts nothing else
    names: it says whether ``local@domain`` (lower case) is a user of the password store, who
    then has a mailbox here like any configured user.

    An address is looked up in this order: an alias, a mailing list, a user (by their address
    or one of their extra addresses), then the same without its sub-address
    (``user+tag`` -> ``user`` with ``recipient_delimiter`` "+"), then the domain's
    catch-all."""

    def __init__(
        self,
        domains: Mapping[str, DomainConfig],
        *,
        mail_root: Path,
        users: Mapping[str, UserConfig] | None = None,
        aliases: Mapping[str, tuple[str, ...]] | None = None,
        lists: Mapping[str, ListConfig] | None = None,
        recipient_delimiter: str = "+",
        store: DirectoryStore | None = None,
        user_exists: Callable[[str], bool] | None = None,
    ) -> None:
        self._user_exists = user_exists
        self._store = store
        self._delimiter = recipient_delimiter
        self._mail_root = mail_root
        # Keyed by the A-label form, so that bücher.test and xn--bcher-kva.test are one
        # domain; each keeps the name it was configured with, which names its directory.
        self._domains = {
            domain_key(name): _Domain(name.lower(), spec, {_user_key(u): u for u in spec.users})
            for name, spec in domains.items()
        }
        self._attributes: dict[str, tuple[str, UserConfig]] = {}
        for address, user in (users or {}).items():
            primary = self._canonical(address)
            self._attributes[primary] = (primary, user)
            for extra in user.addresses:
                self._attributes[self._canonical(extra)] = (primary, user)
            local, _, domain = primary.rpartition("@")
            served = self._domains.get(domain_key(domain))
            if served is not None:  # a [users] entry makes a user of a served domain
                served.users.setdefault(_user_key(local), local)
        self._aliases = {self._canonical(a): t for a, t in (aliases or {}).items()}
        self._lists = {self._canonical(a): spec for a, spec in (lists or {}).items()}

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        store: DirectoryStore | None = None,
        user_exists: Callable[[str], bool] | None = None,
    ) -> Directory:
        """The directory a server with ``config`` uses (``store``: its directory.db)."""
        return cls(
            config.domains,
            mail_root=config.mail_dir,
            users=config.users,
            aliases=config.aliases,
            lists=config.lists,
            recipient_delimiter=config.directory.recipient_delimiter,
            store=store,
            user_exists=user_exists,
        )

    @staticmethod
    def _canonical(address: str) -> str:
        return canonical_address(address)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(d.name for d in self._domains.values())

    @property
    def primary_domain(self) -> str | None:
        """Where a bare ``<postmaster>`` goes: the first domain served (None: a relay only)."""
        return next((d.name for d in self._domains.values()), None)

    @property
    def store(self) -> DirectoryStore | None:
        return self._store

    def serves(self, domain: str) -> bool:
        return domain_key(domain) in self._domains

    # -- lookups --------------------------------------------------------------------------------
    def route(self, local_part: str, domain: str) -> Route | None:
        """Where mail for ``local_part@domain`` goes, or None when nothing here takes it."""
        if domain_key(domain) not in self._domains:
            return None
        found = self._route(local_part, domain)
        if found is None and self._delimiter and self._delimiter in local_part[1:]:
            # Sub-addressing: user+tag reaches user (Postfix: recipient_delimiter).
            found = self._route(local_part.split(self._delimiter, 1)[0], domain)
        if found is None:
            found = self._catch_all(local_part, domain)
        return found

    def find(self, local_part: str, domain: str) -> Mailbox | None:
        """The mailbox of ``local_part@domain``, or None when it leads to no mailbox here."""
        found = self.route(local_part, domain)
        if isinstance(found, Forward):
            return found.mailbox
        return found if isinstance(found, Mailbox) else None

    def mailbox_of(self, address: str) -> Mailbox | None:
        local, _, domain = address.rpartition("@")
        return self.find(local, domain)

    def _route(self, local_part: str, domain: str) -> Route | None:
        dkey = domain_key(domain)
        served = self._domains[dkey]
        key = _user_key(local_part)
        address = f"{key}@{dkey}"
        stored = self._store.entry(address) if self._store is not None else _NO_ENTRY
        targets = self._aliases.get(address) or stored.alias
        if targets:
            return Alias(f"{local_part}@{served.name}", targets)
        mailing_list = self._lists.get(address) or stored.mailing_list
        if mailing_list is not None:
            return MailingList(
                f"{local_part}@{served.name}",
                mailing_list.members,
                mailing_list.owner,
                mailing_list.posting,
            )
        attributes = self._attributes.get(address) or stored.user
        user = None
        if attributes is not None:
            primary, _ = attributes
            primary_local, _, primary_domain = primary.rpartition("@")
            if domain_key(primary_domain) == dkey:
                user = served.users.get(_user_key(primary_local), primary_local)
            else:
                # An extra address in another domain of ours leads to the user's own mailbox.
                other = self._domains.get(domain_key(primary_domain))
                if other is None:
                    return None
                served, user = other, other.users.get(_user_key(primary_local), primary_local)
        if user is None:
            user = served.users.get(key)
        if user is None and key == "postmaster":
            user = "postmaster"
        if (
            user is None
            and self._user_exists is not None
            and _SAFE_MAILBOX_NAME.fullmatch(key)
            # Asked last: it reads users.db, whose addresses are ASCII (A-labels).
            and self._user_exists(address)
        ):
            user = key
        if user is None:
            return None
        return self._mailbox_route(served, user, attributes)

    def _mailbox_route(
        self, served: _Domain, user: str, attributes: tuple[str, UserConfig] | None
    ) -> Route:
        spec = attributes[1] if attributes is not None else UserConfig()
        mailbox = Mailbox(
            user,
            served.name,
            _maildir_path(self._mail_root, served.name, user),
            spec.name,
            spec.quota,
        )
        if spec.moved_to:
            return Moved(mailbox.address, spec.moved_to)
        if spec.forward:
            own = {self._canonical(mailbox.address)}
            if attributes is not None:
                own.add(self._canonical(attributes[0]))
            keep = any(self._canonical(t) in own for t in spec.forward)
            others = tuple(t for t in spec.forward if self._canonical(t) not in own)
            if others:
                return Forward(mailbox.address, others, mailbox if keep else None)
        return mailbox

    def _catch_all(self, local_part: str, domain: str) -> Mailbox | None:
        served = self._domains[domain_key(domain)]
        key = _user_key(local_part)
        if served.spec.catch_all and _SAFE_MAILBOX_NAME.fullmatch(key):
            return Mailbox(key, served.name, _maildir_path(self._mail_root, served.name, key))
        return None

    def candidates(self, name: str) -> list[Route]:
        """What a bare name (VRFY without a domain) may mean: its route in every domain,
        and users whose full name contains it."""
        found: list[Route] = []
        for served in self._domains.values():
            route = self.route(name, served.name)
            if route is not None and not (isinstance(route, Mailbox) and route in found):
                found.append(route)
        wanted = name.lower()
        if len(wanted) >= 3:  # matching on full names, as sendmail's VRFY did
            for primary, spec in self._all_user_attributes():
                if wanted in spec.name.lower():
                    local, _, domain = primary.rpartition("@")
                    route = self.route(local, domain)
                    if route is not None and route not in found:
                        found.append(route)
        return found

    def _all_user_attributes(self) -> list[tuple[str, UserConfig]]:
        seen = dict(self._attributes.values())
        if self._store is not None:
            for primary, spec in self._store.users():
                seen.setdefault(primary, spec)
        return sorted(seen.items())

    def describe(self) -> list[str]:
        """One line per domain saying who receives mail there, for the startup banner."""
        lines = []
        for served in self._domains.values():
            who = (
                "any local part"
                if served.spec.catch_all
                else ", ".join([*served.users.values(), "postmaster"])
            )
            lines.append(
                f"{served.name}: {who} -> {self._mail_root / served.name}/<user>/ (Maildir)"
            )
        return lines
