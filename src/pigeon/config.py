"""Configuration: one TOML file, embedded defaults, and command-line overrides.

With no file at all, Pigeon is a useful local server: it listens on 127.0.0.1:2525, serves
the domain ``localhost`` and takes mail for any local part of it into Maildirs under
``./pigeon-data``. ``pigeon.example.toml`` in the repository documents every setting.

Loading is strict: an unknown key or a value of the wrong kind stops the server with a
message naming the key, because a typo in a mail server's configuration should never
silently fall back to a default (an open relay is one typo away).
"""

from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pigeon.smtp._abnf import DOMAIN_RE

__all__ = [
    "AUTH_MECHANISMS",
    "AuthConfig",
    "Config",
    "ConfigError",
    "DirectoryConfig",
    "DomainConfig",
    "ExtensionsConfig",
    "Limits",
    "ListConfig",
    "ListenerConfig",
    "OdmrConfig",
    "QueueConfig",
    "Rate",
    "TLSConfig",
    "UserConfig",
    "WebConfig",
    "check_address",
    "check_tls",
    "load_config",
    "parse_host_port",
    "parse_rate",
]

Compat = Literal["rfc5321", "rfc821"]
# "hidden": 252 without looking; "off": 502; "on": answer from the directory;
# "authenticated": "on" for clients that have authenticated, else "hidden" (VRFY) or "off"
# (EXPN); "auto": "hidden"/"off" on an mx listener, "authenticated" on submission ones.
VrfyPolicy = Literal["auto", "hidden", "off", "on", "authenticated"]
ExpnPolicy = Literal["auto", "off", "on", "authenticated"]
BareLineEnds = Literal["reject", "keep"]
# "auto": STARTTLS when a certificate is configured, else none.
ListenerTLS = Literal["auto", "none", "starttls", "implicit"]
TLSMode = Literal["none", "starttls", "implicit"]
TLSVersion = Literal["1.2", "1.3"]
# "mx": mail for the domains served (port 25); "submission" (587, STARTTLS) and
# "submissions" (465, implicit TLS): mail from authenticated users, to anywhere.
ListenerRole = Literal["mx", "submission", "submissions"]
ListenerAuth = Literal["auto", "on", "off"]
PlaintextAuth = Literal["loopback", "never", "always"]
# The SASL mechanisms Pigeon implements (pigeon.auth), strongest first.
AUTH_MECHANISMS = ("SCRAM-SHA-256", "PLAIN", "LOGIN")


class ConfigError(Exception):
    """The configuration is wrong; the message says where and how."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    address: str = "127.0.0.1:2525"
    # "rfc821" accepts what pre-1990s clients send (see README); never needed by modern ones.
    compat: Compat = "rfc5321"
    vrfy: VrfyPolicy = "auto"  # see VrfyPolicy
    expn: ExpnPolicy = "auto"
    bare_line_ends: BareLineEnds = "reject"
    # "starttls" (RFC 3207) for ports 25 and 587, "implicit" (RFC 8314) for port 465.
    tls: ListenerTLS = "auto"
    role: ListenerRole = "mx"
    # AUTH offered: "auto" on the submission roles only (where it is required), "on" on an
    # mx listener too, "off" never (not allowed on a submission role).
    auth: ListenerAuth = "auto"
    # AUTH before TLS: "loopback" (clients on 127.0.0.0/8 or ::1 only), "never", "always".
    auth_plaintext: PlaintextAuth = "loopback"
    # An authenticated user may send only as their own address (553 5.7.1 otherwise).
    sender_login_match: bool = True
    # RFC 821's SEND, SOML and SAML (to users' terminals, see pigeon watch). Off: 502, as
    # Postfix answers; on, a SEND to a user who is not logged on gets 450, which tells
    # anyone who asks whether that user is watching, so it is the administrator's choice.
    send_commands: bool = False
    # ETRN (RFC 1985): anyone may ask that mail queued for a domain be tried now.
    etrn: bool = False
    # ATRN (RFC 2645) and authenticated TURN: an owner of an [odmr] domain takes its mail
    # over this connection. Needs AUTH on the listener.
    atrn: bool = False

    @property
    def vrfy_policy(self) -> VrfyPolicy:
        if self.vrfy != "auto":
            return self.vrfy
        return "hidden" if self.role == "mx" else "authenticated"

    @property
    def expn_policy(self) -> ExpnPolicy:
        if self.expn != "auto":
            return self.expn
        return "off" if self.role == "mx" else "authenticated"

    @property
    def offers_auth(self) -> bool:
        return self.auth == "on" or (self.auth == "auto" and self.role != "mx")

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_host_port(self.address, default_port=25)


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """The server's certificate and key (PEM files, read again on SIGHUP)."""

    certificate: Path | None = None  # none: no TLS at all
    key: Path | None = None  # none: the key is in the certificate file
    min_version: TLSVersion = "1.2"


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """SMTP AUTH, on the listeners that offer it; the users are in <data_dir>/users.db."""

    mechanisms: tuple[str, ...] = AUTH_MECHANISMS  # offered in this order
    # Seconds before 535 after a failed AUTH; doubled with each failure in the session,
    # up to 8 times this (1, 2, 4, 8, 8...), to slow password guessing down.
    failure_delay: float = 1.0


@dataclass(frozen=True, slots=True)
class DomainConfig:
    users: tuple[str, ...] = ()
    catch_all: bool = False


QuotaAction = Literal["defer", "bounce"]
ListPosting = Literal["anyone", "members", "owner"]


@dataclass(frozen=True, slots=True)
class UserConfig:
    """What the directory knows of a user beyond their name in ``domains``."""

    name: str = ""  # the full name VRFY shows: 250 Alice Liddell <alice@example.test>
    quota: int = 0  # octets in the mailbox; 0: no limit
    addresses: tuple[str, ...] = ()  # more addresses that reach this mailbox
    forward: tuple[str, ...] = ()  # mail goes on to these (RCPT: 251); list the user to keep a copy
    moved_to: str = ""  # the user's new address (RCPT: 551, mail is not taken)


@dataclass(frozen=True, slots=True)
class ListConfig:
    """A mailing list: its members, its owner (who gets its bounces) and who may post."""

    members: tuple[str, ...] = ()
    owner: str = ""
    posting: ListPosting = "anyone"


@dataclass(frozen=True, slots=True)
class OdmrConfig:
    """A domain held for on-demand relay (RFC 2645): its mail is taken from anyone, as a
    backup MX would, and waits in the queue until one of its owners (users of users.db)
    fetches it with ATRN (or authenticated TURN)."""

    owners: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    recipient_delimiter: str = "+"  # user+tag@domain reaches user; "": no sub-addressing
    quota_exceeded: QuotaAction = "defer"  # at delivery: try again later, or bounce
    hop_limit: int = 50  # Received headers beyond this: a mail loop (Postfix: hopcount_limit)


@dataclass(frozen=True, slots=True)
class Limits:
    message_size: int = 25 * 1024 * 1024
    recipients: int = 1000
    connections: int = 1000
    errors: int = 10
    # RFC 5321 section 4.5.3.2.7: at least 5 minutes waiting for the next command.
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    min_free_disk: int = 100 * 1024 * 1024  # MAIL gets 452 4.3.1 below this
    shutdown_grace: float = 30.0
    # Abuse controls. Clients in trusted_networks are exempt from those keyed by address,
    # as Postfix exempts $mynetworks from its anvil limits.
    messages_per_session: int = 1000  # then MAIL gets 421 4.7.0 (as Exim's default)
    connections_per_ip: int = 50  # at once; 421 4.7.0 beyond (Postfix's default)
    commands_per_minute: int = 0  # per session, then 421 4.7.0; 0: no limit
    greeting_delay: float = 0.0  # seconds before the 220; talking first gets 554 5.5.0
    message_rate_per_ip: str = ""  # "N/minute" etc.: MAIL beyond it gets 450 4.7.1
    message_rate_per_user: str = ""  # the same, per authenticated user


@dataclass(frozen=True, slots=True)
class ExtensionsConfig:
    """The ESMTP extensions offered in the EHLO reply. SIZE follows ``limits.message_size``
    and STARTTLS the listener's ``tls``; each of these is listed only when set."""

    pipelining: bool = True  # RFC 2920
    eightbitmime: bool = True  # RFC 6152
    smtputf8: bool = True  # RFC 6531: UTF-8 addresses
    chunking: bool = True  # RFC 3030: BDAT
    binarymime: bool = True  # RFC 3030: BODY=BINARYMIME; needs chunking
    enhanced_status_codes: bool = True  # RFC 2034
    requiretls: bool = True  # RFC 8689; listed only once TLS is active
    dsn: bool = True  # RFC 3461: delivery status notifications as the sender asks


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` events per ``seconds``: "30/minute" is Rate(30, 60.0)."""

    count: int
    seconds: float


_RATE_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def parse_rate(text: str, where: str = "rate") -> Rate | None:
    """``"N/unit"`` (unit: second, minute, hour or day) as a Rate; ``""`` means no limit."""
    if text == "":
        return None
    count, slash, unit = text.replace(" ", "").partition("/")
    seconds = _RATE_UNITS.get(unit.lower().removesuffix("s"))
    if not slash or seconds is None or not (count.isascii() and count.isdigit()):
        raise ConfigError(
            f'{where}: expected "N/second", "N/minute", "N/hour" or "N/day" (or "" for no'
            f" limit), got {text!r}"
        )
    if int(count) == 0:
        raise ConfigError(f'{where}: a rate of 0 refuses all mail; "" means no limit')
    return Rate(int(count), seconds)


RelayTLS = Literal["opportunistic", "starttls", "implicit", "off"]


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """Retrying, expiring and sending on: Postfix's defaults unless said otherwise."""

    first_retry: float = 300.0  # seconds after a temporary failure; doubles each time
    max_retry_interval: float = 3600.0  # the doubling stops here
    lifetime: float = 5 * 86400.0  # then a temporary failure becomes a bounce (5.4.7)
    delay_warning: float = 4 * 3600.0  # the sender hears once when mail is this late; 0: never
    outbound_connections: int = 100  # SMTP connections to other servers, in all
    destination_concurrency: int = 20  # of them, to one destination (domain or relayhost)
    relayhost: str = ""  # "host:port" or "[host]:port": send everything there, no MX lookup
    relay_tls: RelayTLS = "opportunistic"
    relay_username: str = ""  # AUTH at the relayhost; the password is read from
    relay_password_file: Path | None = None  # this file (first line), never the config


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The web UI, HTTP API and metrics (``pigeon.web``), served by the first worker."""

    enabled: bool = True
    # Loopback by default: other machines reach the UI only when this says so.
    address: str = "127.0.0.1:8025"
    # Users of users.db who see every mailbox, the queue, the SMTP log and the directory.
    admins: tuple[str, ...] = ()
    session_lifetime: float = 12 * 3600.0  # seconds a login lasts


@dataclass(frozen=True, slots=True)
class Config:
    hostname: str = "localhost"
    data_dir: Path = Path("pigeon-data")
    listen: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    domains: dict[str, DomainConfig] = field(
        default_factory=lambda: {"localhost": DomainConfig(catch_all=True)}
    )
    trusted_networks: tuple[str, ...] = ()
    resolver: tuple[str, ...] = ()  # DNS servers for reverse lookups; none: no lookups
    limits: Limits = field(default_factory=Limits)
    tls: TLSConfig = field(default_factory=TLSConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    extensions: ExtensionsConfig = field(default_factory=ExtensionsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    users: dict[str, UserConfig] = field(default_factory=dict)  # by address
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)  # address -> targets
    lists: dict[str, ListConfig] = field(default_factory=dict)  # list address -> list
    odmr: dict[str, OdmrConfig] = field(default_factory=dict)  # held domain -> its owners
    web: WebConfig = field(default_factory=WebConfig)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    @property
    def directory_db(self) -> Path:
        return self.data_dir / "directory.db"

    @property
    def anvil(self) -> Path:
        """The table of connections and rates per client that the workers share."""
        return self.data_dir / "anvil"

    @property
    def queue_index(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def users_db(self) -> Path:
        return self.data_dir / "users.db"

    def with_overrides(self, **overrides: Any) -> Config:
        return replace(self, **overrides)

    def listener_tls(self, listener: ListenerConfig) -> TLSMode:
        """What TLS ``listener`` speaks, with "auto" decided by whether there is a certificate."""
        if listener.tls == "auto":
            if listener.role == "submissions":
                return "implicit"  # RFC 8314: port 465 speaks TLS from the first byte
            return "starttls" if self.tls.certificate is not None else "none"
        return listener.tls


def parse_host_port(text: str, *, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``:port``; raises ConfigError."""
    host, port = text, str(default_port)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"{text!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{text!r}: expected ':port' after ']'")
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{text!r}: port must be a number from 0 to 65535")
    return host or "0.0.0.0", int(port)


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    try:
        return _build_config(raw, base=path.parent)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _build_config(raw: dict[str, Any], *, base: Path) -> Config:
    known = {f.name for f in fields(Config)}
    _no_unknown(raw, known, where="")
    values: dict[str, Any] = {}
    if "hostname" in raw:
        values["hostname"] = check_hostname(_str(raw["hostname"], "hostname"))
    if "data_dir" in raw:
        data_dir = Path(_str(raw["data_dir"], "data_dir"))
        values["data_dir"] = data_dir if data_dir.is_absolute() else base / data_dir
    if "listen" in raw:
        values["listen"] = tuple(_listener(item, i) for i, item in _list(raw["listen"], "listen"))
        if not values["listen"]:
            raise ConfigError("listen: at least one listener is needed")
    if "domains" in raw:
        domains = raw["domains"]
        if not isinstance(domains, dict):
            raise ConfigError("domains: expected a table of domain names")
        values["domains"] = {
            name.lower(): _domain(spec, f"domains.{name}") for name, spec in domains.items()
        }
    if "trusted_networks" in raw:
        values["trusted_networks"] = tuple(
            check_network(_str(v, key), key)
            for i, v in _list(raw["trusted_networks"], "trusted_networks")
            for key in [f"trusted_networks[{i}]"]
        )
    if "resolver" in raw:
        values["resolver"] = check_resolvers(
            tuple(_str(v, f"resolver[{i}]") for i, v in _list(raw["resolver"], "resolver")),
            "resolver",
        )
    if "limits" in raw:
        values["limits"] = _limits(raw["limits"])
    if "tls" in raw:
        values["tls"] = _tls(raw["tls"], base=base)
    if "auth" in raw:
        values["auth"] = _auth(raw["auth"])
    if "extensions" in raw:
        values["extensions"] = _extensions(raw["extensions"])
    if "queue" in raw:
        values["queue"] = _queue(raw["queue"], base=base)
    if "web" in raw:
        values["web"] = _web(raw["web"])
    if "directory" in raw:
        values["directory"] = _directory(raw["directory"])
    if "users" in raw:
        values["users"] = {
            check_address(name, f"users.{name}"): _user(spec, f"users.{name}")
            for name, spec in _table(raw["users"], "users").items()
        }
    if "aliases" in raw:
        values["aliases"] = {
            check_address(name, f"aliases.{name}"): _addresses(targets, f"aliases.{name}")
            for name, targets in _table(raw["aliases"], "aliases").items()
        }
        if any(not targets for targets in values["aliases"].values()):
            raise ConfigError("aliases: every alias needs at least one target address")
    if "lists" in raw:
        values["lists"] = {
            check_address(name, f"lists.{name}"): _mailing_list(spec, f"lists.{name}")
            for name, spec in _table(raw["lists"], "lists").items()
        }
    if "odmr" in raw:
        values["odmr"] = {
            _odmr_domain(name): _odmr(spec, f"odmr.{name}")
            for name, spec in _table(raw["odmr"], "odmr").items()
        }
        served = {d.lower() for d in values.get("domains", Config().domains)}
        for name in values["odmr"]:
            if name in served:
                raise ConfigError(
                    f"odmr.{name}: a domain served here cannot also be held for another server"
                )
    return check_tls(Config(**values))


def _odmr_domain(name: str) -> str:
    if not DOMAIN_RE.fullmatch(name) or name.startswith("["):
        raise ConfigError(f"odmr.{name}: not a domain name like customer.example")
    return name.lower()


def _odmr(raw: Any, where: str) -> OdmrConfig:
    table = _table(raw, where)
    _no_unknown(table, {f.name for f in fields(OdmrConfig)}, where=f"{where}.")
    owners = tuple(a.lower() for a in _addresses(table.get("owners", []), f"{where}.owners"))
    if not owners:
        raise ConfigError(f"{where}.owners: name at least one user who may fetch its mail")
    return OdmrConfig(owners=owners)


def check_tls(config: Config) -> Config:
    """A listener that must speak TLS needs a certificate to speak it with."""
    if config.tls.certificate is None:
        if config.tls.key is not None:
            raise ConfigError("tls.key (--tls-key): set tls.certificate (--tls-cert) too")
        for index, listener in enumerate(config.listen):
            if listener.tls in ("starttls", "implicit"):
                raise ConfigError(
                    f"listen[{index}].tls: {listener.tls!r} needs a certificate:"
                    " set tls.certificate (--tls-cert)"
                )
            if listener.role == "submissions":
                raise ConfigError(
                    f"listen[{index}].role: 'submissions' is implicit TLS and needs a"
                    " certificate: set tls.certificate (--tls-cert)"
                )
    return config


def check_network(text: str, where: str) -> str:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(
            f"{where}: {text!r} is not a network (expected CIDR like 192.0.2.0/24)"
        ) from None
    return text


def check_hostname(text: str, where: str = "hostname") -> str:
    """The server's name goes into every greeting, reply and header: it must be a domain."""
    if not DOMAIN_RE.fullmatch(text) or len(text) > 255:
        raise ConfigError(f"{where}: {text!r} is not a domain name like mx.example.test")
    return text


def check_listen(text: str, where: str) -> str:
    try:
        parse_host_port(text, default_port=25)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return text


def check_resolvers(servers: tuple[str, ...], where: str) -> tuple[str, ...]:
    """DNS servers are addresses (a resolver cannot look up its own name), on one port; or
    the single word "system", for the servers of /etc/resolv.conf."""
    if "system" in servers:
        if servers != ("system",):
            raise ConfigError(f'{where}: "system" stands alone, not beside addresses')
        return servers
    ports = set()
    for server in servers:
        try:
            host, port = parse_host_port(server, default_port=53)
            ipaddress.ip_address(host)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        except ValueError:
            raise ConfigError(f"{where}: {server!r} is not an IP address[:port]") from None
        ports.add(port)
    if len(ports) > 1:
        raise ConfigError(f"{where}: all DNS servers must use the same port")
    return servers


def _listener(raw: Any, index: int) -> ListenerConfig:
    where = f"listen[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _no_unknown(raw, {f.name for f in fields(ListenerConfig)}, where=f"{where}.")
    values: dict[str, Any] = {}
    for key in (
        "address",
        "compat",
        "vrfy",
        "expn",
        "bare_line_ends",
        "tls",
        "role",
        "auth",
        "auth_plaintext",
    ):
        if key in raw:
            values[key] = _str(raw[key], f"{where}.{key}")
    for flag in ("sender_login_match", "send_commands", "etrn", "atrn"):
        if flag in raw:
            if not isinstance(raw[flag], bool):
                raise ConfigError(f"{where}.{flag}: expected true or false")
            values[flag] = raw[flag]
    choices = {
        "compat": ("rfc5321", "rfc821"),
        "vrfy": ("auto", "hidden", "off", "on", "authenticated"),
        "expn": ("auto", "off", "on", "authenticated"),
        "bare_line_ends": ("reject", "keep"),
        "tls": ("auto", "none", "starttls", "implicit"),
        "role": ("mx", "submission", "submissions"),
        "auth": ("auto", "on", "off"),
        "auth_plaintext": ("loopback", "never", "always"),
    }
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ConfigError(f"{where}.{key}: {values[key]!r} is not one of {', '.join(allowed)}")
    listener = ListenerConfig(**values)
    check_listen(listener.address, f"{where}.address")
    if listener.role != "mx" and listener.auth == "off":
        raise ConfigError(
            f"{where}.auth: a {listener.role} listener requires AUTH; it cannot be 'off'"
        )
    if listener.role == "submissions" and listener.tls not in ("auto", "implicit"):
        raise ConfigError(f"{where}.tls: a submissions listener speaks implicit TLS only")
    if listener.atrn and not listener.offers_auth:
        # RFC 2645 section 4: ATRN is for authenticated clients only.
        raise ConfigError(f"{where}.atrn: needs AUTH on this listener (auth = 'on')")
    return listener


def _domain(raw: Any, where: str) -> DomainConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    _no_unknown(raw, {"users", "catch_all"}, where=f"{where}.")
    users = tuple(
        _str(u, f"{where}.users[{i}]") for i, u in _list(raw.get("users", []), f"{where}.users")
    )
    catch_all = raw.get("catch_all", False)
    if not isinstance(catch_all, bool):
        raise ConfigError(f"{where}.catch_all: expected true or false")
    return DomainConfig(users=users, catch_all=catch_all)


def _limits(raw: Any) -> Limits:
    if not isinstance(raw, dict):
        raise ConfigError("limits: expected a table")
    _no_unknown(raw, {f.name for f in fields(Limits)}, where="limits.")
    values: dict[str, Any] = {}
    for f in fields(Limits):
        if f.name not in raw:
            continue
        value = raw[f.name]
        if f.type == "str":  # a rate, "N/minute"
            parse_rate(_str(value, f"limits.{f.name}"), f"limits.{f.name}")
            values[f.name] = value
            continue
        numeric = (int, float) if f.type == "float" else (int,)
        if (
            isinstance(value, bool)
            or not isinstance(value, numeric)
            or not math.isfinite(value)
            or value < 0
        ):
            kind = "a number" if f.type == "float" else "a whole number"
            raise ConfigError(f"limits.{f.name}: expected {kind} >= 0, got {value!r}")
        values[f.name] = value
    return Limits(**values)


def check_address(text: str, where: str) -> str:
    """An address as the directory stores it: local@domain, domain in lower case."""
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in text):
        raise ConfigError(f"{where}: {text!r} is not an address like user@example.test")
    return f"{local}@{domain.lower()}"


def _table(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    return raw


def _addresses(raw: Any, where: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    return tuple(
        check_address(_str(v, f"{where}[{i}]"), f"{where}[{i}]") for i, v in _list(raw, where)
    )


def _directory(raw: Any) -> DirectoryConfig:
    table = _table(raw, "directory")
    _no_unknown(table, {f.name for f in fields(DirectoryConfig)}, where="directory.")
    values: dict[str, Any] = {}
    if "recipient_delimiter" in table:
        delimiter = _str(table["recipient_delimiter"], "directory.recipient_delimiter")
        if (
            len(delimiter) > 1
            or delimiter in ("@", '"', "\\")
            or (delimiter and delimiter.isalnum())
        ):
            raise ConfigError(
                "directory.recipient_delimiter: one character like + or -, or empty;"
                f" got {delimiter!r}"
            )
        values["recipient_delimiter"] = delimiter
    if "quota_exceeded" in table:
        action = _str(table["quota_exceeded"], "directory.quota_exceeded")
        if action not in ("defer", "bounce"):
            raise ConfigError(f"directory.quota_exceeded: expected defer or bounce, got {action!r}")
        values["quota_exceeded"] = action
    if "hop_limit" in table:
        limit = table["hop_limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"directory.hop_limit: expected a whole number >= 1, got {limit!r}")
        values["hop_limit"] = limit
    return DirectoryConfig(**values)


def _user(raw: Any, where: str) -> UserConfig:
    table = _table(raw, where)
    _no_unknown(table, {f.name for f in fields(UserConfig)}, where=f"{where}.")
    values: dict[str, Any] = {}
    if "name" in table:
        values["name"] = _str(table["name"], f"{where}.name")
    if "quota" in table:
        quota = table["quota"]
        if isinstance(quota, bool) or not isinstance(quota, int) or quota < 0:
            raise ConfigError(
                f"{where}.quota: expected octets (a whole number >= 0), got {quota!r}"
            )
        values["quota"] = quota
    for key in ("addresses", "forward"):
        if key in table:
            values[key] = _addresses(table[key], f"{where}.{key}")
    if table.get("moved_to"):
        values["moved_to"] = check_address(
            _str(table["moved_to"], f"{where}.moved_to"), f"{where}.moved_to"
        )
    user = UserConfig(**values)
    if user.forward and user.moved_to:
        raise ConfigError(f"{where}: forward and moved_to exclude each other")
    return user


def _mailing_list(raw: Any, where: str) -> ListConfig:
    table = _table(raw, where)
    _no_unknown(table, {f.name for f in fields(ListConfig)}, where=f"{where}.")
    members = _addresses(table.get("members", []), f"{where}.members")
    if "owner" not in table:
        raise ConfigError(f"{where}.owner: a list needs an owner (it receives the list's bounces)")
    owner = check_address(_str(table["owner"], f"{where}.owner"), f"{where}.owner")
    posting = _str(table.get("posting", "anyone"), f"{where}.posting")
    if posting not in ("anyone", "members", "owner"):
        raise ConfigError(f"{where}.posting: expected anyone, members or owner, got {posting!r}")
    return ListConfig(members=members, owner=owner, posting=posting)  # type: ignore[arg-type]


def _queue(raw: Any, *, base: Path) -> QueueConfig:
    if not isinstance(raw, dict):
        raise ConfigError("queue: expected a table")
    _no_unknown(raw, {f.name for f in fields(QueueConfig)}, where="queue.")
    values: dict[str, Any] = {}
    for f in fields(QueueConfig):
        if f.name not in raw:
            continue
        value, where = raw[f.name], f"queue.{f.name}"
        if f.type in ("float", "int"):
            numeric = (int, float) if f.type == "float" else (int,)
            if (
                isinstance(value, bool)
                or not isinstance(value, numeric)
                or not math.isfinite(value)
                or value < 0
            ):
                kind = "a number" if f.type == "float" else "a whole number"
                raise ConfigError(f"{where}: expected {kind} >= 0, got {value!r}")
            values[f.name] = value
        elif f.name == "relay_password_file":
            text = _str(value, where)
            path = Path(text)
            values[f.name] = None if not text else path if path.is_absolute() else base / path
        else:
            values[f.name] = _str(value, where)
    queue = QueueConfig(**values)
    for name in ("first_retry", "max_retry_interval", "lifetime"):
        if not getattr(queue, name) > 0:
            raise ConfigError(f"queue.{name}: must be more than 0")
    if queue.outbound_connections < 1 or queue.destination_concurrency < 1:
        raise ConfigError("queue.outbound_connections and destination_concurrency: at least 1")
    if queue.relay_tls not in ("opportunistic", "starttls", "implicit", "off"):
        raise ConfigError(
            f"queue.relay_tls: expected opportunistic, starttls, implicit or off,"
            f" got {queue.relay_tls!r}"
        )
    if queue.relayhost:
        try:
            _, port = parse_host_port(
                queue.relayhost, default_port=465 if queue.relay_tls == "implicit" else 25
            )
        except ConfigError as error:
            raise ConfigError(f"queue.relayhost: {error}") from None
        if not queue.relayhost.strip() or queue.relayhost.startswith(":") or not port:
            raise ConfigError(f"queue.relayhost: {queue.relayhost!r} must name a host and port")
    if bool(queue.relay_username) != (queue.relay_password_file is not None):
        raise ConfigError("queue.relay_username and queue.relay_password_file go together")
    if queue.relay_username and not queue.relayhost:
        raise ConfigError("queue.relay_username: set queue.relayhost too")
    return queue


def _web(raw: Any) -> WebConfig:
    if not isinstance(raw, dict):
        raise ConfigError("web: expected a table")
    _no_unknown(raw, {f.name for f in fields(WebConfig)}, where="web.")
    values: dict[str, Any] = {}
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise ConfigError("web.enabled: expected true or false")
        values["enabled"] = raw["enabled"]
    if "address" in raw:
        values["address"] = check_listen(_str(raw["address"], "web.address"), "web.address")
    if "admins" in raw:
        values["admins"] = tuple(
            _str(a, f"web.admins[{i}]").strip().lower()
            for i, a in _list(raw["admins"], "web.admins")
        )
    if "session_lifetime" in raw:
        lifetime = raw["session_lifetime"]
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not math.isfinite(lifetime)
            or lifetime <= 0
        ):
            raise ConfigError(f"web.session_lifetime: expected seconds > 0, got {lifetime!r}")
        values["session_lifetime"] = float(lifetime)
    return WebConfig(**values)


def _extensions(raw: Any) -> ExtensionsConfig:
    if not isinstance(raw, dict):
        raise ConfigError("extensions: expected a table")
    _no_unknown(raw, {f.name for f in fields(ExtensionsConfig)}, where="extensions.")
    for key, value in raw.items():
        if not isinstance(value, bool):
            raise ConfigError(f"extensions.{key}: expected true or false, got {value!r}")
    extensions = ExtensionsConfig(**raw)
    if extensions.binarymime and not extensions.chunking:
        # RFC 3030 section 3: a BINARYMIME message can only be sent with BDAT.
        raise ConfigError("extensions.binarymime: needs extensions.chunking = true")
    return extensions


def _auth(raw: Any) -> AuthConfig:
    if not isinstance(raw, dict):
        raise ConfigError("auth: expected a table")
    _no_unknown(raw, {f.name for f in fields(AuthConfig)}, where="auth.")
    values: dict[str, Any] = {}
    if "mechanisms" in raw:
        names = [
            _str(m, f"auth.mechanisms[{i}]").upper()
            for i, m in _list(raw["mechanisms"], "auth.mechanisms")
        ]
        for name in names:
            if name not in AUTH_MECHANISMS:
                raise ConfigError(
                    f"auth.mechanisms: {name!r} is not one of {', '.join(AUTH_MECHANISMS)}"
                )
        if not names or len(set(names)) != len(names):
            raise ConfigError("auth.mechanisms: name each mechanism once, at least one")
        values["mechanisms"] = tuple(names)
    if "failure_delay" in raw:
        delay = raw["failure_delay"]
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise ConfigError(f"auth.failure_delay: expected a number >= 0, got {delay!r}")
        values["failure_delay"] = float(delay)
    return AuthConfig(**values)


def _tls(raw: Any, *, base: Path) -> TLSConfig:
    if not isinstance(raw, dict):
        raise ConfigError("tls: expected a table")
    _no_unknown(raw, {f.name for f in fields(TLSConfig)}, where="tls.")
    values: dict[str, Any] = {}
    for key in ("certificate", "key"):
        if key in raw:
            text = _str(raw[key], f"tls.{key}")
            if text:  # "" is the default: none
                path = Path(text)
                values[key] = path if path.is_absolute() else base / path
    if "min_version" in raw:
        version = raw["min_version"]
        if not isinstance(version, str) or version not in ("1.2", "1.3"):
            raise ConfigError(
                f'tls.min_version: expected "1.2" or "1.3" (a string), got {version!r}'
            )
        values["min_version"] = version
    return TLSConfig(**values)


def _no_unknown(raw: dict[str, Any], known: set[str], *, where: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown setting {where}{key} (known: {', '.join(sorted(known))})")


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _list(value: Any, where: str) -> list[tuple[int, Any]]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list")
    return list(enumerate(value))
