"""The delivery agents as the queue sees them: the interfaces it needs, named here so that
the queue never imports ``pigeon.delivery`` (whose agents use the queue's data types) and the
server can give it the agents it builds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from pigeon.delivery.result import DeliveryResult, MaildirItem

from .envelope import Envelope

__all__ = ["LocalAgent", "RemoteAgent", "RemoteSession", "TerminalAgent"]


class LocalAgent(Protocol):
    """What the scheduler needs of a local delivery agent (``pigeon.delivery.MaildirAgent``).

    The queue names the interface instead of importing the agent: agents are given to it, so
    ``pigeon.delivery`` may use the queue's data types without an import cycle."""

    def deliver_many(self, items: Sequence[MaildirItem]) -> list[DeliveryResult]: ...

    def sync_new_dirs(self, maildirs: Iterable[Path]) -> dict[Path, DeliveryResult | None]: ...


class RemoteSession(Protocol):
    """One connection to a destination, for several messages (``SmtpAgent.session``)."""

    async def deliver(
        self,
        recipients: Sequence[str],
        *,
        envelope: Envelope,
        body: bytes,
        positions: Sequence[int] | None = None,
    ) -> list[DeliveryResult]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class RemoteAgent(Protocol):
    """What the scheduler needs of the outbound agent (``pigeon.delivery.smtp.SmtpAgent``)."""

    def destination(self, domain: str) -> str:
        """Which connection mail for ``domain`` travels on: the domain, or the relayhost."""
        ...

    def session(self, domain: str) -> RemoteSession: ...


class TerminalAgent(Protocol):
    """What the scheduler needs of the terminal agent (``pigeon.delivery.terminal``): show a
    SEND, SOML or SAML message on a local user's terminals; True when one showed it."""

    async def write(
        self, address: str, *, recipient: str, envelope: Envelope, queue_id: str, message: bytes
    ) -> bool: ...
