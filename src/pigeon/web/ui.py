"""The web UI: server-rendered pages (Jinja2) with a little JavaScript on top.

Every page works without script; ``static/app.js`` adds the reading pane without reloads,
the live inbox (server-sent events) and the live SMTP log. No inline script or style
anywhere, so the pages' Content-Security-Policy can forbid both.

Forms carry the session's CSRF token in a hidden field; the login form, which comes before
any session, uses a double-submit token (a cookie and a field that must match).
"""

from __future__ import annotations

import hmac
import math
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from pigeon import worker_transcripts
from pigeon.queue import admin as queue_admin
from pigeon.queue.index import QueueIndexError, RequestAction

from .access import Context, context_of, readable_mailbox
from .api import act, queue_counts
from .live import mailbox_events, open_sessions
from .mailboxes import MessageQuery, UnknownMessage
from .security import (
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    Principal,
    identify,
    same_origin,
)

__all__ = ["LoginRequired", "router", "templates"]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
_PAGE_SIZE = 50


class LoginRequired(Exception):
    """Raised by pages that need a login; answered with a redirect to /login."""


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size //= 1024
    return f"{size:.1f} GiB"


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return ""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["size"] = _human_size
templates.env.filters["when"] = _when


def _user(request: Request) -> Principal:
    principal = identify(request, context_of(request))
    if principal is None or principal.via != "session":
        raise LoginRequired
    return principal


def _check_form(request: Request, principal: Principal, csrf: str) -> None:
    if not same_origin(request) or not hmac.compare_digest(principal.csrf, csrf):
        raise HTTPException(403, "the form is stale or comes from elsewhere: reload the page")


def _page(request: Request, name: str, principal: Principal | None, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"user": principal, "csrf": principal.csrf if principal else "", **values}
    )


# -- logging in and out -----------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, error: str = "") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _page(request, "login.html", None, login_csrf=token, error=error)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


@router.post("/login")
def login(
    request: Request,
    context: Context,
    username: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str, Form(alias=CSRF_FIELD, max_length=200)] = "",
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie, csrf) or not same_origin(request):
        return RedirectResponse("/login?error=expired", status_code=303)
    # scrypt, slow on purpose: this handler runs in a worker thread.
    address = context.users.check_password(username.strip(), password)
    if address is None:
        return RedirectResponse("/login?error=wrong", status_code=303)
    sid, _ = context.store.open_session(address, context.config.web.session_lifetime)
    response = RedirectResponse("/", status_code=303)
    _set_cookie(
        request, response, SESSION_COOKIE, sid, max_age=int(context.config.web.session_lifetime)
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


@router.post("/logout")
def logout(
    request: Request, context: Context, csrf: Annotated[str, Form(alias=CSRF_FIELD)] = ""
) -> Response:
    principal = _user(request)
    _check_form(request, principal, csrf)
    context.store.close_session(request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",  # behind a TLS proxy; plain HTTP on loopback
    )


# -- mail -------------------------------------------------------------------------------------
@router.get("/")
def home(request: Request) -> Response:
    principal = _user(request)
    if principal.admin:
        return RedirectResponse("/mail", status_code=303)
    return RedirectResponse(f"/mail/{principal.address}", status_code=303)


@router.get("/mail")
def mailbox_list(request: Request, context: Context) -> HTMLResponse:
    principal = _user(request)
    boxes = []
    for ref in context.mailboxes.all():
        if principal.may_read(ref.address):
            total, unread = context.mailboxes.counts(ref)
            boxes.append({"address": ref.address, "messages": total, "unread": unread})
    return _page(request, "mailboxes.html", principal, mailboxes=boxes, section="mail")


def _listing(
    context: Context, principal: Principal, address: str, *, q: str, page: int
) -> dict[str, Any]:
    ref = readable_mailbox(context, principal, address)
    page = max(1, page)
    total, summaries = context.mailboxes.summaries(
        ref, MessageQuery(text=q), offset=(page - 1) * _PAGE_SIZE, limit=_PAGE_SIZE
    )
    pages = max(1, math.ceil(total / _PAGE_SIZE))
    return {
        "address": ref.address,
        "messages": summaries,
        "total": total,
        "q": q,
        "page": page,
        "pages": pages,
        "query": urlencode({k: v for k, v in (("q", q), ("page", page)) if v and v != 1}),
    }


@router.get("/mail/{address}")
def inbox(
    *, request: Request, context: Context, address: str, q: str = "", page: int = 1, m: str = ""
) -> HTMLResponse:
    principal = _user(request)
    listing = _listing(context, principal, address, q=q, page=page)
    pane = _pane_values(context, principal, address, m) if m else None
    return _page(request, "inbox.html", principal, section="mail", selected=m, pane=pane, **listing)


@router.get("/mail/{address}/list")
def inbox_list(
    *, request: Request, context: Context, address: str, q: str = "", page: int = 1, m: str = ""
) -> HTMLResponse:
    principal = _user(request)
    listing = _listing(context, principal, address, q=q, page=page)
    return _page(request, "_list.html", principal, selected=m, **listing)


def _pane_values(
    context: Context, principal: Principal, address: str, message_id: str
) -> dict[str, Any]:
    ref = readable_mailbox(context, principal, address)
    try:
        parsed = context.mailboxes.message(ref, message_id)
        raw = context.mailboxes.raw(ref, message_id)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None
    return {
        "address": ref.address,
        "message": parsed,
        "raw": raw.decode("utf-8", "replace"),
        "api": f"/api/mailboxes/{ref.address}/messages/{message_id}",
    }


@router.get("/mail/{address}/pane/{message_id}")
def pane(request: Request, context: Context, address: str, message_id: str) -> HTMLResponse:
    principal = _user(request)
    values = _pane_values(context, principal, address, message_id)
    return _page(request, "_pane.html", principal, pane=values)


@router.get("/mail/{address}/events")
def inbox_events(request: Request, context: Context, address: str) -> StreamingResponse:
    principal = _user(request)
    ref = readable_mailbox(context, principal, address)
    return StreamingResponse(
        mailbox_events(context, ref, request.is_disconnected),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )


@router.post("/mail/{address}/m/{message_id}/{action}")
def message_action(
    *,
    request: Request,
    context: Context,
    address: str,
    message_id: str,
    action: str,
    csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "",
) -> Response:
    principal = _user(request)
    _check_form(request, principal, csrf)
    ref = readable_mailbox(context, principal, address)
    try:
        if action == "delete":
            context.mailboxes.delete(ref, message_id)
            return RedirectResponse(f"/mail/{ref.address}", status_code=303)
        if action in ("read", "unread"):
            context.mailboxes.set_seen(ref, message_id, action == "read")
            return RedirectResponse(f"/mail/{ref.address}?m={message_id}", status_code=303)
    except UnknownMessage:
        raise HTTPException(404, "no such message") from None
    raise HTTPException(404, "no such action")


# -- the queue and the SMTP log (administrators) ----------------------------------------------
def _admin(request: Request) -> Principal:
    principal = _user(request)
    if not principal.admin:
        raise HTTPException(403, "only administrators ([web] admins) may see this")
    return principal


@router.get("/queue")
def queue_page(request: Request, context: Context, notice: str = "") -> HTMLResponse:
    principal = _admin(request)
    error = ""
    try:
        messages = context.queue.messages()
    except QueueIndexError as problem:
        messages, error = [], str(problem)
    return _page(
        request,
        "queue.html",
        principal,
        section="queue",
        messages=messages,
        counts=queue_counts(context),
        error=error,
        notice=notice,
    )


@router.post("/queue/{queue_id}/{action}")
def queue_action(
    request: Request,
    context: Context,
    queue_id: str,
    action: str,
    csrf: Annotated[str, Form(alias=CSRF_FIELD)] = "",
) -> Response:
    principal = _admin(request)
    _check_form(request, principal, csrf)
    if action not in {a.value for a in RequestAction}:
        raise HTTPException(404, "no such action")
    try:
        result = act(context, RequestAction(action), queue_id)  # "all": every message
    except queue_admin.UnknownMessage:
        raise HTTPException(404, "no such message in the queue") from None
    notice = "; ".join(result.report) or (
        f"{action}: waiting for {', '.join(result.waiting)}" if result.waiting else action
    )
    return RedirectResponse("/queue?" + urlencode({"notice": notice}), status_code=303)


@router.get("/sessions")
def sessions_page(request: Request, context: Context) -> HTMLResponse:
    principal = _admin(request)
    return _page(request, "sessions.html", principal, section="sessions", **_sessions(context))


@router.get("/sessions/list")
def sessions_list(request: Request, context: Context) -> HTMLResponse:
    principal = _admin(request)
    return _page(request, "_sessions.html", principal, **_sessions(context))


def _sessions(context: Context) -> dict[str, Any]:
    return {
        "sessions": worker_transcripts.recent(context.config.data_dir, context.status.worker),
        "open_sessions": open_sessions(context.status.sessions),
    }
