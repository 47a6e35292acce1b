"""A Pigeon server with its web UI for the web tests: users, a token, and an HTTP client."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path

import httpx

from pigeon.auth import UserStore
from pigeon.config import WebConfig
from pigeon.web.context import web_db
from pigeon.web.store import WebStore
from tests.servers import ThreadedServer, make_config

__all__ = ["ADMIN", "PASSWORD", "USER", "WebServer", "log_in", "running_web", "send_mail"]

USER = "alice@example.test"
ADMIN = "admin@example.test"
PASSWORD = "correct horse battery staple"


@dataclass
class WebServer:
    smtp: ThreadedServer
    url: str
    user_token: str
    admin_token: str
    data_dir: Path

    @property
    def smtp_address(self) -> tuple[str, int]:
        return self.smtp.address


@contextmanager
def running_web(tmp_path: Path, **overrides: object) -> Iterator[WebServer]:
    """A server on loopback ports chosen by the kernel, with alice (a user) and admin (in
    ``[web] admins``) in users.db, and a bearer token for each."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = make_config(data_dir, **overrides)
    config = replace(config, web=WebConfig(enabled=True, address="127.0.0.1:0", admins=(ADMIN,)))
    users = UserStore(config.users_db)
    users.add(USER, PASSWORD)
    users.add(ADMIN, PASSWORD)
    users.close()
    store = WebStore(web_db(data_dir))
    _, user_token = store.create_token(USER, "tests")
    _, admin_token = store.create_token(ADMIN, "tests")
    store.close()
    with ThreadedServer(config) as server:
        web = server.server.web
        assert web is not None, "the web UI did not start"
        yield WebServer(server, web.url, user_token, admin_token, data_dir)


def send_mail(
    address: tuple[str, int],
    to: str,
    subject: str,
    text: str = "Hello.",
    html: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> None:
    message = EmailMessage()
    message["From"] = "sender@outside.test"
    message["To"] = to
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    if attachment is not None:
        name, data = attachment
        message.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    with smtplib.SMTP(*address, timeout=10) as client:
        client.send_message(message)


_CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


def log_in(client: httpx.Client, address: str = USER, password: str = PASSWORD) -> str:
    """Log ``client`` in through the login form; returns the session's CSRF token."""
    page = client.get("/login")
    token = _CSRF_FIELD.search(page.text)
    assert token is not None
    answer = client.post(
        "/login",
        data={"username": address, "password": password, "csrf": token.group(1)},
        headers={"Origin": str(client.base_url).rstrip("/")},
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"
    me = client.get("/api/me")
    assert me.status_code == 200, me.text
    csrf = me.json()["csrf_token"]
    assert isinstance(csrf, str)
    return csrf
