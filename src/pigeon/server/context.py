"""What every session of one server shares: configuration, spool, scheduler and policies."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import dns.asyncresolver

from pigeon.auth import UserStore
from pigeon.config import Config, ListenerConfig, TLSMode
from pigeon.delivery.terminal import TerminalRegistry
from pigeon.directory import Directory
from pigeon.policy import Anvil, ClientLimits, RelayPolicy, VerifyPolicy
from pigeon.queue.scheduler import Scheduler
from pigeon.queue.spool import Spool
from pigeon.smtp import ServerSettings

from .tls import ServerTLS

if TYPE_CHECKING:
    from .session import Session

__all__ = ["Listener", "ServerContext"]


@dataclass(slots=True)
class ServerContext:
    config: Config
    directory: Directory
    relay: RelayPolicy
    spool: Spool
    scheduler: Scheduler
    resolver: dns.asyncresolver.Resolver | None
    tls: ServerTLS | None = None  # the certificate, when one is configured
    users: UserStore | None = None  # who may AUTH; None: nobody
    anvil: Anvil | None = None  # counts per client shared by the workers; None: this one's
    sessions: set[Session] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)  # for HELP STATUS's uptime
    shutting_down: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # last session gone
    # The loop the sessions run in. Made in it; kept because on Python 3.11 each
    # asyncio.get_running_loop() costs a getpid() system call, several times a message.
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    _disk_checked_at: float = -1.0
    _disk_ok: bool = True
    # Connections and message rates per client (and per user), counted in the anvil.
    client_limits: ClientLimits = field(init=False)
    # Users' live terminals, for SEND's "is the user logged on?" at RCPT.
    terminals: TerminalRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.client_limits = ClientLimits(
            self.config.limits, is_exempt=self.relay.is_trusted, anvil=self.anvil
        )
        self.terminals = TerminalRegistry(self.config.data_dir)

    def has_free_disk(self) -> bool:
        """Whether the spool's file system is above ``limits.min_free_disk``.

        statvfs is cheap but not free; once a second is plenty for a floor meant to stop
        accepting mail well before the disk is full."""
        floor = self.config.limits.min_free_disk
        if not floor:
            return True
        now = time.monotonic()
        if now - self._disk_checked_at >= 1.0:
            self._disk_checked_at = now
            try:
                self._disk_ok = shutil.disk_usage(self.config.spool_dir).free >= floor
            except OSError:
                self._disk_ok = False
        return self._disk_ok


@dataclass(slots=True)
class Listener:
    """One listening address and the protocol settings and policies that go with it."""

    context: ServerContext
    config: ListenerConfig
    smtp_settings: ServerSettings
    verify: VerifyPolicy
    tls: TLSMode = "none"
    # For loopback clients, when they differ (AUTH without TLS, auth_plaintext = "loopback").
    loopback_settings: ServerSettings | None = None

    @property
    def implicit_tls(self) -> bool:
        return self.tls == "implicit"

    def settings_for(self, client_ip: str) -> ServerSettings:
        if self.loopback_settings is not None and _is_loopback(client_ip):
            return self.loopback_settings
        return self.smtp_settings

    @classmethod
    def build(cls, context: ServerContext, config: ListenerConfig) -> Listener:
        limits = context.config.limits
        extensions = context.config.extensions
        tls = context.config.listener_tls(config)
        if tls != "none" and context.tls is None:
            raise RuntimeError("a TLS listener on a server without a certificate")
        settings = ServerSettings(
            hostname=context.config.hostname,
            classic=config.compat == "rfc821",
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
            max_errors=limits.errors,
            reject_bare_line_ends=config.bare_line_ends == "reject",
            starttls=tls == "starttls",
            pipelining=extensions.pipelining,
            eightbitmime=extensions.eightbitmime,
            enhanced_status_codes=extensions.enhanced_status_codes,
            smtputf8=extensions.smtputf8,
            chunking=extensions.chunking,
            binarymime=extensions.binarymime,
            # Offered only once TLS is active, which needs a certificate (RFC 8689).
            requiretls=extensions.requiretls and tls != "none",
            dsn=extensions.dsn,
            etrn=config.etrn,
            atrn=config.atrn,
        )
        loopback = None
        if config.offers_auth:
            settings = replace(
                settings,
                auth_mechanisms=context.config.auth.mechanisms,
                auth_plaintext=config.auth_plaintext == "always",
                # RFC 6409 section 4.3: submission is for authenticated users.
                auth_required=config.role != "mx",
            )
            if config.auth_plaintext == "loopback":
                loopback = replace(settings, auth_plaintext=True)
        verify = VerifyPolicy(context.directory, vrfy=config.vrfy_policy, expn=config.expn_policy)
        return cls(context, config, settings, verify, tls, loopback)


def _is_loopback(client_ip: str) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
