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
    "Config",
    "ConfigError",
    "DomainConfig",
    "Limits",
    "ListenerConfig",
    "TLSConfig",
    "check_tls",
    "load_config",
    "parse_host_port",
]

Compat = Literal["rfc5321", "rfc821"]
VrfyPolicy = Literal["hidden", "off", "on"]
ExpnPolicy = Literal["off", "on"]
BareLineEnds = Literal["reject", "keep"]
# "auto": STARTTLS when a certificate is configured, else none.
ListenerTLS = Literal["auto", "none", "starttls", "implicit"]
TLSMode = Literal["none", "starttls", "implicit"]
TLSVersion = Literal["1.2", "1.3"]


class ConfigError(Exception):
    """The configuration is wrong; the message says where and how."""


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    address: str = "127.0.0.1:2525"
    # "rfc821" accepts what pre-1990s clients send (see README); never needed by modern ones.
    compat: Compat = "rfc5321"
    vrfy: VrfyPolicy = "hidden"  # hidden: 252 without looking; off: 502; on: answer truthfully
    expn: ExpnPolicy = "off"
    bare_line_ends: BareLineEnds = "reject"
    # "starttls" (RFC 3207) for ports 25 and 587, "implicit" (RFC 8314) for port 465.
    tls: ListenerTLS = "auto"

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
class DomainConfig:
    users: tuple[str, ...] = ()
    catch_all: bool = False


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

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    def with_overrides(self, **overrides: Any) -> Config:
        return replace(self, **overrides)

    def listener_tls(self, listener: ListenerConfig) -> TLSMode:
        """What TLS ``listener`` speaks, with "auto" decided by whether there is a certificate."""
        if listener.tls == "auto":
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
    return check_tls(Config(**values))


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
    for key in ("address", "compat", "vrfy", "expn", "bare_line_ends", "tls"):
        if key in raw:
            values[key] = _str(raw[key], f"{where}.{key}")
    choices = {
        "compat": ("rfc5321", "rfc821"),
        "vrfy": ("hidden", "off", "on"),
        "expn": ("off", "on"),
        "bare_line_ends": ("reject", "keep"),
        "tls": ("auto", "none", "starttls", "implicit"),
    }
    for key, allowed in choices.items():
        if key in values and values[key] not in allowed:
            raise ConfigError(f"{where}.{key}: {values[key]!r} is not one of {', '.join(allowed)}")
    listener = ListenerConfig(**values)
    check_listen(listener.address, f"{where}.address")
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
