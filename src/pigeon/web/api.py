"""The HTTP API under ``/api``: mailboxes and messages, the queue, the directory, the status.

Handlers are plain functions where they touch files or SQLite, so FastAPI runs them in worker
threads and the event loop (which also serves SMTP) never waits on a disk. The queue actions
go through ``pigeon.queue.admin.QueueAdmin``, exactly as ``pigeon queue`` does; their doorbell
may ring this very process, whose event loop is free to answer because the handler is in a
thread.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Path, Query, Response

from pigeon import __version__, worker_transcripts
from pigeon.queue import admin as queue_admin
from pigeon.queue.index import IndexedMessage, QueueIndex, QueueIndexError, RequestAction

from . import models
from .access import Admin, ApiUser, Context, readable_mailbox
from .context import WebContext
from .live import open_sessions
from .mailboxes import MessageQuery, ParsedMessage, UnknownMessage
from .security import MESSAGE_CSP

__all__ = ["router", "safe_attachment_type"]

_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": models.Error, "description": "not logged in, or no valid token"},
    403: {"model": models.Error, "description": "not allowed, or no CSRF token"},
    404: {"model": models.Error, "description": "no such thing (or not yours)"},
}
router = APIRouter(prefix="/api", responses=_ERRORS)

# The queue id of an action for every message, in the API's paths and the UI's forms.
EVERY_MESSAGE = "all"

# Attachments are always downloaded, never shown in this origin; these types keep their own
# name so the browser opens the download with the right program, the rest is octet-stream.
_KEPT_TYPES = frozenset(
    {"application/pdf", "image/png", "image/jpeg", "image/gif", "text/plain", "text/csv"}
)


def _when(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC)


# -- who am I ---------------------------------------------------------------------------------
@router.get("/me", response_model=models.Me, tags=["session"])
def me(principal: ApiUser) -> models.Me:
    return models.Me(address=principal.address, admin=principal.admin, csrf_token=principal.csrf)


# -- mailboxes and messages -------------------------------------------------------------------
@router.get("/mailboxes", response_model=list[models.MailboxInfo], tags=["mail"])
def mailboxes(context: Context, principal: ApiUser) -> list[models.MailboxInfo]:
    """The mailboxes you may read: your own, or every one for an administrator."""
    found = []
    for ref in context.mailboxes.all():
        if principal.may_read(ref.address):
            total, unread = context.mailboxes.counts(ref)
            found.append(
                models.MailboxInfo(
                    address=ref.address,
                    domain=ref.domain,
                    user=ref.user,
                    messages=total,
                    unread=unread,
                )
            )
    return found


@router.get("/mailboxes/{address}/messages", response_model=models.MessagePage, tags=["mail"])
def messages(
    *,
    context: Context,
    principal: ApiUser,
    address: str,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    q: Annotated[str, Query(max_length=200, description="in sender, recipients or subject")] = "",
    sender: Annotated[str, Query(alias="from", max_length=200)] = "",
    to: Annotated[str, Query(max_length=200)] = "",
    subject: Annotated[str, Query(max_length=200)] = "",
    since: Annotated[datetime | None, Query(description="received at or after")] = None,
    until: Annotated[datetime | None, Query(description="received before")] = None,
) -> models.MessagePage:
    """Newest first, a page at a time; every search term given must match (case aside)."""
    ref = readable_mailbox(context, principal, address)
    query = MessageQuery(q, sender, to, subject, _aware(since), _aware(until))
    total, page = context.mailboxes.summaries(ref, query, offset=offset, limit=limit)
    return models.MessagePage(
        total=total,
        offset=offset,
        limit=limit,
        messages=[models.MessageSummaryModel.model_validate(s, from_attributes=True) for s in page],
    )


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _parsed(context: WebContext, principal: ApiUser, address: str, id: str) -> ParsedMessage:
    ref = readable_mailbox(context, principal, address)
    try:
        return context.mailboxes.message(ref, id)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None


@router.get(
    "/mailboxes/{address}/messages/{id}", response_model=models.MessageDetail, tags=["mail"]
)
def message(context: Context, principal: ApiUser, address: str, id: str) -> models.MessageDetail:
    """One message, parsed: headers, the text part, and what else it holds."""
    parsed = _parsed(context, principal, address, id)
    summary = models.MessageSummaryModel.model_validate(parsed.summary, from_attributes=True)
    return models.MessageDetail(
        **summary.model_dump(),
        mailbox=address.lower(),
        message_id=parsed.message_id,
        cc=parsed.cc,
        headers=[models.HeaderField(name=n, value=v) for n, v in parsed.headers],
        text=parsed.text,
        has_html=parsed.html is not None,
        attachments=[
            models.AttachmentInfo(
                index=a.index,
                filename=a.filename,
                content_type=a.content_type,
                size=a.size,
                content_id=a.content_id,
            )
            for a in parsed.attachments
        ],
    )


@router.get(
    "/mailboxes/{address}/messages/{id}/raw",
    response_class=Response,
    responses={200: {"content": {"message/rfc822": {}}, "description": "RFC 5322 source"}},
    tags=["mail"],
)
def raw(context: Context, principal: ApiUser, address: str, id: str) -> Response:
    """The message as delivered (RFC 5322), byte for byte."""
    ref = readable_mailbox(context, principal, address)
    try:
        data = context.mailboxes.raw(ref, id)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None
    return Response(data, media_type="message/rfc822")


@router.get(
    "/mailboxes/{address}/messages/{id}/html",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}, "description": "the HTML part, sandboxed"}},
    tags=["mail"],
)
def html(context: Context, principal: ApiUser, address: str, id: str) -> Response:
    """The HTML part, with a policy that lets no script run and loads nothing remote."""
    parsed = _parsed(context, principal, address, id)
    if parsed.html is None:
        raise HTTPException(404, "this message has no HTML part")
    return Response(
        parsed.html,
        media_type="text/html",
        headers={"Content-Security-Policy": MESSAGE_CSP, "X-Frame-Options": "SAMEORIGIN"},
    )


def safe_attachment_type(content_type: str) -> str:
    return content_type if content_type in _KEPT_TYPES else "application/octet-stream"


@router.get(
    "/mailboxes/{address}/messages/{id}/attachments/{index}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "a download"}},
    tags=["mail"],
)
def attachment(
    context: Context,
    principal: ApiUser,
    address: str,
    id: str,
    index: Annotated[int, Path(ge=0, le=100_000)],
) -> Response:
    """An attachment, always as a download (never rendered in this origin)."""
    ref = readable_mailbox(context, principal, address)
    try:
        found = context.mailboxes.attachment(ref, id, index)
    except UnknownMessage:
        raise HTTPException(404, "no such attachment") from None
    name = quote(found.filename, safe="")
    return Response(
        found.payload(),
        media_type=safe_attachment_type(found.content_type),
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
            "Content-Security-Policy": MESSAGE_CSP,
        },
    )


@router.delete("/mailboxes/{address}/messages/{id}", status_code=204, tags=["mail"])
def delete_message(context: Context, principal: ApiUser, address: str, id: str) -> Response:
    ref = readable_mailbox(context, principal, address)
    try:
        context.mailboxes.delete(ref, id)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None
    return Response(status_code=204)


@router.post("/mailboxes/{address}/messages/{id}/read", status_code=204, tags=["mail"])
def mark_read(
    context: Context,
    principal: ApiUser,
    address: str,
    id: str,
    seen: Annotated[bool, Query(description="false marks it unread")] = True,
) -> Response:
    """Set (or clear) the Maildir flag S, as a mail reader does."""
    ref = readable_mailbox(context, principal, address)
    try:
        context.mailboxes.set_seen(ref, id, seen)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None
    return Response(status_code=204)


# -- the queue (administrators) ---------------------------------------------------------------
def _queue_message(message: IndexedMessage) -> models.QueueMessage:
    return models.QueueMessage(
        queue_id=message.queue_id,
        size=message.size,
        arrival=datetime.fromtimestamp(message.arrival, UTC),
        sender=message.sender,
        worker=message.owner,
        recipients=[
            models.QueueRecipient(
                address=r.address,
                state=r.state.value,
                attempts=r.attempts,
                next_attempt=_when(r.next_attempt),
                status=r.status,
                last_reply=r.last_reply,
            )
            for r in message.recipients
        ],
    )


@router.get("/queue", response_model=list[models.QueueMessage], tags=["queue"])
def queue_list(context: Context, _admin: Admin) -> list[models.QueueMessage]:
    """Every message in the queue, oldest first (``pigeon queue list``)."""
    try:
        return [_queue_message(m) for m in context.queue.messages()]
    except QueueIndexError as error:
        raise HTTPException(503, str(error)) from None


@router.get("/queue/{queue_id}", response_model=models.QueueMessageDetail, tags=["queue"])
def queue_show(context: Context, _admin: Admin, queue_id: str) -> models.QueueMessageDetail:
    """One message: envelope, header and attempts (``pigeon queue show``)."""
    try:
        report = context.queue.show(queue_id)
    except queue_admin.UnknownMessage:
        raise HTTPException(404, "no such message in the queue") from None
    except QueueIndexError:
        raise HTTPException(404, "no such message in the queue") from None
    base = _queue_message(report.message)
    return models.QueueMessageDetail(
        **base.model_dump(),
        header=report.header,
        problem=report.problem,
        attempts=[
            models.QueueAttempt(
                recipient=a.address,
                at=datetime.fromtimestamp(a.at, UTC),
                outcome=a.outcome,
                status=a.status,
                detail=a.detail,
            )
            for a in report.attempts
        ],
    )


def act(
    context: WebContext, action: RequestAction, queue_id: str | None, domain: str | None = None
) -> models.ActionResult:
    """``action`` for one message, or with ``queue_id`` None or ``"all"`` (never a queue id:
    those are upper case) for every message, as ``pigeon queue ACTION --all`` (a flush takes
    every deferred one, or a domain's)."""
    if queue_id == EVERY_MESSAGE:
        queue_id = None
    try:
        report = context.queue.act(
            action, queue_ids=() if queue_id is None else (queue_id,), domain=domain, timeout=15
        )
    except queue_admin.UnknownMessage:
        raise HTTPException(404, "no such message in the queue") from None
    except QueueIndexError as error:
        raise HTTPException(503, str(error)) from None
    return models.ActionResult(
        action=action.value, queue_id=queue_id, report=report.lines, waiting=report.waiting
    )


@router.post("/queue/flush", response_model=models.ActionResult, tags=["queue"])
def queue_flush_all(
    context: Context,
    _admin: Admin,
    domain: Annotated[str | None, Query(max_length=255)] = None,
) -> models.ActionResult:
    """Try every deferred message now, or those for one domain (``pigeon queue flush``)."""
    return act(context, RequestAction.FLUSH, None, domain or None)


@router.post("/queue/{queue_id}/{action}", response_model=models.ActionResult, tags=["queue"])
def queue_act(
    context: Context,
    _admin: Admin,
    queue_id: str,
    action: Literal["flush", "hold", "release", "delete", "bounce"],
) -> models.ActionResult:
    """``pigeon queue flush|hold|release|delete|bounce ID``; the id ``all`` is every message
    (``--all``, postsuper's ALL)."""
    return act(context, RequestAction(action), queue_id)


# -- the server -------------------------------------------------------------------------------
def queue_counts(context: WebContext) -> dict[str, int]:
    if not context.config.queue_index.exists():
        return {}
    try:
        with QueueIndex(context.config.queue_index, readonly=True) as index:
            return index.count()
    except QueueIndexError:
        return {}


@router.get("/status", response_model=models.Status, tags=["server"])
def status(context: Context, _admin: Admin) -> models.Status:
    """Listeners, open sessions, uptime and the queue at a glance."""
    live = context.status
    return models.Status(
        hostname=context.config.hostname,
        version=__version__,
        worker=live.worker,
        uptime=round(time.time() - live.started, 3),
        sessions_open=open_sessions(live.sessions),
        listeners=[
            models.ListenerModel(address=lst.address, tls=lst.tls, role=lst.role)
            for lst in live.listeners
        ],
        queue=queue_counts(context),
    )


@router.get("/sessions", response_model=list[models.SessionTranscript], tags=["server"])
def sessions(
    context: Context, _admin: Admin, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[models.SessionTranscript]:
    """Transcripts of the recent SMTP sessions of every worker, live and ended, newest
    first."""
    found = worker_transcripts.recent(context.config.data_dir, context.status.worker, limit)
    return [
        models.SessionTranscript(
            worker=t.worker,
            number=t.number,
            session=t.session,
            client=t.client,
            started=datetime.fromtimestamp(t.started, UTC),
            ended=_when(t.ended),
            lines=[models.TranscriptLine(direction=d, text=x) for d, x in t.lines],
        )
        for t in found
    ]


# -- the directory (read-only) ----------------------------------------------------------------
@router.get("/domains", response_model=list[models.DomainInfo], tags=["directory"])
def domains(context: Context, _admin: Admin) -> list[models.DomainInfo]:
    """The domains served, with their configured users and those of users.db."""
    stored = [u.address for u in context.users.list()]
    found = []
    for name, spec in context.config.domains.items():
        users = {f"{u.lower()}@{name}" for u in spec.users}
        users |= {a for a in stored if a.rpartition("@")[2] == name}
        found.append(models.DomainInfo(domain=name, catch_all=spec.catch_all, users=sorted(users)))
    return found


@router.get("/users", response_model=list[models.UserInfo], tags=["directory"])
def users(context: Context, _admin: Admin) -> list[models.UserInfo]:
    """Who may log in (users.db) and who has a mailbox by configuration."""
    found = {
        u.address: models.UserInfo(address=u.address, source="users.db", admin=False)
        for u in context.users.list()
    }
    for name, spec in context.config.domains.items():
        for user in spec.users:
            address = f"{user.lower()}@{name}"
            found.setdefault(
                address, models.UserInfo(address=address, source="configuration", admin=False)
            )
    for info in found.values():
        info.admin = context.is_admin(info.address)
    return sorted(found.values(), key=lambda u: u.address)
