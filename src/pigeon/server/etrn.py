"""ETRN (RFC 1985): a client asks that the mail queued for a domain be tried now.

The same library call as ``pigeon queue flush --domain`` (``QueueAdmin.act``): a request in
the queue index for every worker, and a ring of each, so mail held by any worker process is
started, this one's included. It runs in a thread: ringing waits for each worker's answer,
and this worker answers from the event loop the session is waiting on.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pigeon.log import event
from pigeon.queue.admin import QueueAdmin
from pigeon.queue.index import QueueIndexError, RecipientState, RequestAction
from pigeon.smtp import Etrn, Reply

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = ["etrn_reply"]

_PENDING = (RecipientState.QUEUED, RecipientState.DEFERRED)
_RING_TIMEOUT = 10.0


async def etrn_reply(context: ServerContext, request: Etrn) -> Reply:
    """The RFC 1985 reply to ``request``, having started the delivery it asks for."""
    shown = f"{request.option}{request.node}"
    if request.option == "#":
        return _not_allowed(shown, "no named queues here")
    if context.directory.serves(request.node):
        return _not_allowed(shown, "its mail is delivered on this server")
    if _held(context, request):
        return _not_allowed(shown, "its mail is held for its owners' ATRN")
    admin = QueueAdmin(context.config.data_dir)
    try:
        domains, messages = await asyncio.to_thread(_waiting_for, admin, request)
        if not domains:
            return Reply.of(251, f"OK, no messages waiting for node {shown}", "2.0.0")
        for domain in sorted(domains):
            await asyncio.to_thread(
                admin.act, RequestAction.FLUSH, domain=domain, timeout=_RING_TIMEOUT
            )
    except (QueueIndexError, OSError) as error:
        event("etrn_failed", node=shown, reason=str(error))
        return Reply.of(458, f"Unable to queue messages for node {shown}", "4.3.0")
    event("etrn", node=shown, messages=messages)
    return Reply.of(250, f"OK, queuing for node {shown} started ({messages} messages)", "2.0.0")


def _not_allowed(node: str, reason: str) -> Reply:
    return Reply.of(459, f"Node {node} not allowed: {reason}", "4.7.1")


def _matches(request: Etrn, domain: str) -> bool:
    return domain == request.node or (request.option == "@" and domain.endswith("." + request.node))


def _held(context: ServerContext, request: Etrn) -> bool:
    # Only the node itself: under "@node" the held domains' recipients are never pending,
    # so they are left alone while the rest is flushed.
    return request.node in context.config.odmr


def _waiting_for(admin: QueueAdmin, request: Etrn) -> tuple[set[str], int]:
    """The domains matching ``request`` with recipients waiting, and how many messages."""
    domains: set[str] = set()
    messages = 0
    for message in admin.messages():
        found = {
            r.domain
            for r in message.recipients
            if r.state in _PENDING and _matches(request, r.domain)
        }
        if found:
            domains |= found
            messages += 1
    return domains, messages
