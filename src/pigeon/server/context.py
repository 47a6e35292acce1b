"""What every session of one server shares: configuration, spool, scheduler and policies."""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.asyncresolver

from pigeon.config import Config, ListenerConfig, TLSMode
from pigeon.directory import Directory
from pigeon.policy import RelayPolicy, VerifyPolicy
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
    sessions: set[Session] = field(default_factory=set)
    shutting_down: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)  # last session gone
    _disk_checked_at: float = -1.0
    _disk_ok: bool = True

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

    @property
    def implicit_tls(self) -> bool:
        return self.tls == "implicit"

    @classmethod
    def build(cls, context: ServerContext, config: ListenerConfig) -> Listener:
        limits = context.config.limits
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
        )
        verify = VerifyPolicy(context.directory, vrfy=config.vrfy, expn=config.expn)
        return cls(context, config, settings, verify, tls)
