"""FastAPI dependencies shared by the API and the UI: the context, and who may do what."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .context import WebContext
from .mailboxes import MailboxRef, UnknownMailbox
from .security import CSRF_HEADER, Principal, csrf_matches, identify, same_origin

__all__ = ["Admin", "ApiUser", "Context", "context_of", "readable_mailbox"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Named in the OpenAPI document, so clients (and schemathesis) know to send a token.
_bearer = HTTPBearer(auto_error=False, description="a token from `pigeon web token create`")


def context_of(request: Request) -> WebContext:
    context = request.app.state.context
    assert isinstance(context, WebContext)
    return context


Context = Annotated[WebContext, Depends(context_of)]


def _api_user(
    request: Request,
    context: Context,
    _token: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    # A plain function: FastAPI runs it in a worker thread, off the event loop, since it
    # reads web.db and users.db.
    principal = identify(request, context)
    if principal is None:
        raise HTTPException(
            401,
            "log in first, or send Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    unsafe = request.method not in _SAFE_METHODS and principal.via == "session"
    if unsafe and not (
        same_origin(request) and csrf_matches(principal, request.headers.get(CSRF_HEADER))
    ):
        raise HTTPException(403, f"the {CSRF_HEADER} header is missing or wrong")
    return principal


ApiUser = Annotated[Principal, Depends(_api_user)]


def _admin(principal: ApiUser) -> Principal:
    if not principal.admin:
        raise HTTPException(403, "only administrators ([web] admins) may do this")
    return principal


Admin = Annotated[Principal, Depends(_admin)]


def readable_mailbox(context: WebContext, principal: Principal, address: str) -> MailboxRef:
    """The mailbox at ``address`` if ``principal`` may read it; 404 otherwise (also when it
    exists but is someone else's, so that the answer does not tell who has mail)."""
    if not principal.may_read(address):
        raise HTTPException(404, "no such mailbox")
    try:
        # Your own mailbox is there (empty) before your first mail arrives.
        own = address.lower() == principal.address
        return context.mailboxes.get(address, must_exist=not own)
    except UnknownMailbox:
        raise HTTPException(404, "no such mailbox") from None
