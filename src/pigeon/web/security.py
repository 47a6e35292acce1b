"""Who is asking, and the headers that keep a browser safe.

Two ways in: a login session (a cookie, HttpOnly and SameSite=Strict, for the UI and for the
API called from it) and a bearer token (``Authorization: Bearer pgn_...``, for scripts;
``pigeon web token create``). A cookie is sent by the browser on its own, so every
state-changing request that relies on one must also carry the session's CSRF token (header
``X-CSRF-Token``, or the form field ``csrf``) and, when the browser says where it comes from,
come from this origin. A bearer token is never sent on its own, so it needs neither.

Every response gets a strict Content-Security-Policy (no inline script, nothing from other
origins, not framed by anyone), nosniff, and no Referer leaving the page. Message HTML is
served with a policy of its own (``MESSAGE_CSP``): no script, no remote content, and the CSP
``sandbox`` directive, so even opened on its own it runs in an opaque origin.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Literal

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import WebContext

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_CSRF_COOKIE",
    "MESSAGE_CSP",
    "PAGE_CSP",
    "SESSION_COOKIE",
    "Principal",
    "SecurityHeaders",
    "csrf_matches",
    "identify",
    "same_origin",
]

SESSION_COOKIE = "pigeon_session"
LOGIN_CSRF_COOKIE = "pigeon_login_csrf"  # double-submit token of the login form
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
# A message's HTML part: no script, nothing remote; only our own pages may frame it, and in
# a sandbox (no allow-scripts, no allow-same-origin) whichever way it is opened.
MESSAGE_CSP = (
    "default-src 'none'; img-src data: cid:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)

_DEFAULT_HEADERS = (
    ("content-security-policy", PAGE_CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    ("cache-control", "no-store"),  # mail is private: no copies in shared or disk caches
)


class SecurityHeaders:
    """ASGI middleware: the headers above on every response that has not set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _DEFAULT_HEADERS:
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass(frozen=True, slots=True)
class Principal:
    address: str
    admin: bool
    via: Literal["session", "token"]
    csrf: str = ""  # the session's CSRF token; none for a bearer token

    def may_read(self, mailbox_address: str) -> bool:
        return self.admin or mailbox_address.lower() == self.address


def identify(request: Request, context: WebContext) -> Principal | None:
    """The user behind ``request``, from its bearer token or session cookie (blocking: reads
    web.db and users.db)."""
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        owner = context.store.token_owner(token.strip())
        if owner is None or not context.users.exists(owner):
            return None
        return Principal(owner, context.is_admin(owner), "token")
    sid = request.cookies.get(SESSION_COOKIE)
    if not sid:
        return None
    session = context.store.session(sid)
    # A user deleted from users.db is logged out at once.
    if session is None or not context.users.exists(session.address):
        return None
    return Principal(session.address, context.is_admin(session.address), "session", session.csrf)


def csrf_matches(principal: Principal, given: str | None) -> bool:
    if principal.via == "token":
        return True
    return bool(given) and hmac.compare_digest(principal.csrf, given or "")


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (Origin, or else
    Sec-Fetch-Site); True when it says nothing (not a browser, or an old one).

    Our pages' Referrer-Policy (no-referrer) makes a browser send ``Origin: null`` with their
    own form posts, as it does for a sandboxed frame's: then only Sec-Fetch-Site, which a
    page cannot forge, can say "same-origin"."""
    origin = request.headers.get("origin")
    site = request.headers.get("sec-fetch-site")
    if origin == "null":
        return site == "same-origin"
    if origin is not None:
        expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
        return origin == expected
    return site in (None, "same-origin", "none")
