"""What every request of the web app may use: configuration, stores, and the live server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pigeon.auth import UserStore
from pigeon.config import Config
from pigeon.queue.admin import QueueAdmin

from .mailboxes import Mailboxes
from .store import WebStore

__all__ = ["ListenerInfo", "ServerStatus", "WebContext"]


@dataclass(frozen=True, slots=True)
class ListenerInfo:
    address: str
    tls: str
    role: str


@dataclass(slots=True)
class ServerStatus:
    """The running server as the web app sees it (none in tests of the app alone)."""

    worker: str = "w0"
    listeners: list[ListenerInfo] = field(default_factory=list)
    sessions: Callable[[], int] = lambda: 0  # open in this process
    started: float = field(default_factory=time.time)


@dataclass(slots=True)
class WebContext:
    config: Config
    users: UserStore
    store: WebStore
    queue: QueueAdmin
    mailboxes: Mailboxes
    status: ServerStatus = field(default_factory=ServerStatus)
    # Set at shutdown: live streams (server-sent events) end at once instead of holding it up.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def open(cls, config: Config, status: ServerStatus | None = None) -> WebContext:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        return cls(
            config=config,
            users=UserStore(config.users_db),
            store=WebStore(web_db(config.data_dir)),
            queue=QueueAdmin(config.data_dir),
            mailboxes=Mailboxes(config.mail_dir),
            status=status or ServerStatus(),
        )

    def close(self) -> None:
        self.users.close()
        self.store.close()

    def is_admin(self, address: str) -> bool:
        return address.lower() in self.config.web.admins


def web_db(data_dir: Path) -> Path:
    return data_dir / "web.db"
