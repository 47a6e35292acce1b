"""Live things: open sessions across workers, and a mailbox's changes as server-sent events.

A delivery may happen in any worker process, so the stream cannot wait for an in-process
signal; it polls the mtimes of the Maildir's new/ and cur/ (two stat calls) every half
second, which notices every arrival, deletion and flag change. Each stream is bounded: it
ends after ``STREAM_SECONDS`` (the browser's EventSource reconnects by itself), when the
client goes away, or when the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, multiprocess

from pigeon import metrics
from pigeon.delivery.terminal import TerminalMessage, open_terminal
from pigeon.log import event_at

from .context import WebContext
from .mailboxes import MailboxRef

__all__ = ["POLL_SECONDS", "STREAM_SECONDS", "mailbox_events", "open_sessions", "viewer_terminal"]

POLL_SECONDS = 0.5
STREAM_SECONDS = 600.0
_KEEPALIVE_SECONDS = 15.0


def open_sessions(in_this_process: Callable[[], int]) -> int:
    """SMTP sessions open in the whole server: the workers' shared gauge when there are
    several, else this process's own count."""
    directory = metrics.multiprocess_directory()
    if directory is None:
        return in_this_process()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    value = registry.get_sample_value("pigeon_smtp_sessions_open")
    return int(value or 0)


@contextlib.asynccontextmanager
async def viewer_terminal(
    context: WebContext, address: str, shown: asyncio.Queue[TerminalMessage]
) -> AsyncIterator[None]:
    """While someone watches ``address``'s inbox live, that inbox is the user's terminal for
    SEND, SOML and SAML (RFC 821 section 3.5, ``pigeon.delivery.terminal``): what reaches it
    is put in ``shown`` for the stream to pass on. A terminal that cannot be registered
    leaves the inbox live all the same."""

    async def show(message: TerminalMessage) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood is cut, not buffered
            shown.put_nowait(message)

    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(open_terminal(context.config.data_dir, address, show))
        except OSError as error:
            event_at(logging.WARNING, "terminal_failed", user=address, reason=str(error))
        yield


async def mailbox_events(
    context: WebContext, ref: MailboxRef, is_disconnected: Callable[[], object]
) -> AsyncIterator[str]:
    """``event: mailbox`` with the counts whenever the Maildir changes (and once at once);
    ``event: terminal`` for each SEND/SOML/SAML message shown on this terminal."""
    deadline = time.monotonic() + STREAM_SECONDS
    last: tuple[int, int] | None = None
    quiet_since = time.monotonic()
    shown: asyncio.Queue[TerminalMessage] = asyncio.Queue(maxsize=20)
    async with viewer_terminal(context, ref.address, shown):
        yield "retry: 1000\n\n"
        while time.monotonic() < deadline and not context.stopping.is_set():
            disconnected = is_disconnected()
            if asyncio.iscoroutine(disconnected):
                disconnected = await disconnected
            if disconnected:
                return
            while not shown.empty():
                message = shown.get_nowait()
                note = {
                    "sender": message.sender,
                    "subject": message.subject,
                    "text": message.text[:4000],
                }
                yield f"event: terminal\ndata: {json.dumps(note)}\n\n"
            version = await asyncio.to_thread(context.mailboxes.version, ref)
            if version != last:
                last = version
                total, unread = await asyncio.to_thread(context.mailboxes.counts, ref)
                payload = json.dumps({"messages": total, "unread": unread})
                yield f"event: mailbox\ndata: {payload}\n\n"
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > _KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"  # a comment: keeps proxies from closing the stream
                quiet_since = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(context.stopping.wait(), POLL_SECONDS)
