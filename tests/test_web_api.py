"""The HTTP API, over real HTTP, against a running server: mail sent with smtplib is read,
searched, marked read and deleted through the API; the queue is acted on; tokens, roles,
CSRF and the security headers hold."""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pigeon.queue.index import QueueIndex
from tests.web_helpers import ADMIN, USER, WebServer, log_in, running_web, send_mail


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    # One server for the module: starting one (and hashing passwords) is the slow part.
    with running_web(tmp_path_factory.mktemp("web")) as server:
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for_messages(client: httpx.Client, address: str, count: int) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        answer = client.get(f"/api/mailboxes/{address}/messages")
        if answer.status_code == 200 and answer.json()["total"] >= count:
            page = answer.json()
            assert isinstance(page, dict)
            return page
        time.sleep(0.05)
    raise AssertionError(f"{count} messages did not arrive for {address}")


def test_everything_but_health_needs_a_login(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=10) as client:
        assert client.get("/api/mailboxes").status_code == 401
        assert client.get("/api/queue").status_code == 401
        assert client.get("/api/mailboxes", headers=bearer("pgn_wrong")).status_code == 401
        assert (
            client.get("/api/mailboxes", headers={"Authorization": "Basic eDp5"}).status_code == 401
        )
        page = client.get("/mail")
        assert page.status_code == 303
        assert page.headers["location"] == "/login"
        assert client.get("/healthz").status_code == 200
        assert client.get("/healthz/live").json() == {"status": "ok"}


def test_messages_read_searched_marked_and_deleted(web: WebServer) -> None:
    send_mail(web.smtp_address, USER, "Quarterly report", "Numbers inside.")
    send_mail(
        web.smtp_address,
        USER,
        "Invoice 42",
        "Please pay.",
        html="<p>Please <b>pay</b>.</p>",
        attachment=("invoice.pdf", b"%PDF-1.4 pretend"),
    )
    with httpx.Client(base_url=web.url, headers=bearer(web.user_token), timeout=10) as client:
        page = wait_for_messages(client, USER, 2)
        assert page["total"] == 2
        boxes = client.get("/api/mailboxes").json()
        assert [b["address"] for b in boxes] == [USER]
        assert boxes[0]["unread"] == 2

        found = client.get(f"/api/mailboxes/{USER}/messages", params={"subject": "invoice"}).json()
        assert [m["subject"] for m in found["messages"]] == ["Invoice 42"]
        assert (
            client.get(f"/api/mailboxes/{USER}/messages", params={"q": "QUARTERLY"}).json()["total"]
            == 1
        )
        assert (
            client.get(f"/api/mailboxes/{USER}/messages", params={"from": "nobody"}).json()["total"]
            == 0
        )
        future = client.get(
            f"/api/mailboxes/{USER}/messages", params={"since": "2999-01-01T00:00:00Z"}
        ).json()
        assert future["total"] == 0
        paged = client.get(f"/api/mailboxes/{USER}/messages", params={"limit": 1, "offset": 1})
        assert len(paged.json()["messages"]) == 1

        invoice = found["messages"][0]
        base = f"/api/mailboxes/{USER}/messages/{invoice['id']}"
        detail = client.get(base).json()
        assert detail["text"].strip() == "Please pay."
        assert detail["has_html"] is True
        assert detail["attachments"][0]["filename"] == "invoice.pdf"
        assert ("Subject", "Invoice 42") in [(h["name"], h["value"]) for h in detail["headers"]]

        raw = client.get(f"{base}/raw")
        assert raw.headers["content-type"] == "message/rfc822"
        parsed = email.message_from_bytes(raw.content, policy=email.policy.default)
        assert parsed["Subject"] == "Invoice 42"

        html = client.get(f"{base}/html")
        assert "<b>pay</b>" in html.text
        assert "sandbox" in html.headers["content-security-policy"]
        assert "script-src" not in html.headers["content-security-policy"]

        index = detail["attachments"][0]["index"]
        download = client.get(f"{base}/attachments/{index}")
        assert download.content == b"%PDF-1.4 pretend"
        assert download.headers["content-disposition"].startswith("attachment;")

        assert client.post(f"{base}/read").status_code == 204
        assert client.get(base).json()["seen"] is True
        cur = list((web.data_dir / "mail/example.test/alice/cur").iterdir())
        assert any(p.name.startswith(invoice["id"]) and p.name.endswith(":2,S") for p in cur)
        assert client.post(f"{base}/read", params={"seen": "false"}).status_code == 204
        assert client.get(base).json()["seen"] is False

        assert client.delete(base).status_code == 204
        assert client.get(base).status_code == 404
        assert client.get(f"/api/mailboxes/{USER}/messages").json()["total"] == 1


def test_a_user_sees_only_their_own_mailbox(web: WebServer) -> None:
    send_mail(web.smtp_address, "bob@example.test", "For Bob")
    with httpx.Client(base_url=web.url, headers=bearer(web.admin_token), timeout=10) as admin:
        assert wait_for_messages(admin, "bob@example.test", 1)["total"] == 1
    with httpx.Client(base_url=web.url, timeout=10) as client:
        mine = client.get(
            "/api/mailboxes/bob@example.test/messages", headers=bearer(web.user_token)
        )
        assert mine.status_code == 404  # not "forbidden": that would say Bob has a mailbox
        assert client.get("/api/queue", headers=bearer(web.user_token)).status_code == 403
        assert (
            client.get(
                "/api/mailboxes/../../etc@x/messages", headers=bearer(web.admin_token)
            ).status_code
            == 404
        )


def test_cookie_requests_that_change_things_need_the_csrf_token(web: WebServer) -> None:
    send_mail(web.smtp_address, USER, "CSRF target")
    with httpx.Client(base_url=web.url, timeout=10) as client:
        csrf = log_in(client)
        page = wait_for_messages(client, USER, 1)
        first = page["messages"][0]  # type: ignore[index]
        url = f"/api/mailboxes/{USER}/messages/{first['id']}/read"
        assert client.post(url).status_code == 403
        assert client.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403
        other_site = {"X-CSRF-Token": csrf, "Origin": "http://evil.test"}
        assert client.post(url, headers=other_site).status_code == 403
        assert client.post(url, headers={"X-CSRF-Token": csrf}).status_code == 204
        cookie = next(c for c in client.cookies.jar if c.name == "pigeon_session")
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert str(cookie.get_nonstandard_attr("SameSite")).lower() == "strict"


def test_the_login_form_refuses_a_wrong_password_and_a_forged_form(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=10) as client:
        client.get("/login")
        forged = client.post("/login", data={"username": USER, "password": "x", "csrf": "forged"})
        assert forged.headers["location"] == "/login?error=expired"
        token = client.cookies["pigeon_login_csrf"]
        wrong = client.post("/login", data={"username": USER, "password": "x", "csrf": token})
        assert wrong.headers["location"] == "/login?error=wrong"
        assert "pigeon_session" not in client.cookies


def test_every_page_has_strict_security_headers(web: WebServer) -> None:
    with httpx.Client(base_url=web.url, timeout=10) as client:
        for path in ("/login", "/api/openapi.json", "/static/app.js", "/healthz"):
            headers = client.get(path).headers
            csp = headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp.split("style-src")[0]
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"
            assert headers["x-frame-options"] == "DENY"


def test_the_id_all_acts_on_every_message_in_the_queue(tmp_path: Path) -> None:
    # 127.0.0.0/8 may relay: mail for another domain waits in the queue (no resolver).
    with (
        running_web(tmp_path, trusted_networks=("127.0.0.0/8",)) as web,
        httpx.Client(base_url=web.url, headers=bearer(web.admin_token), timeout=20) as client,
    ):
        send_mail(web.smtp_address, "someone@remote.test", "One")
        send_mail(web.smtp_address, "someone@remote.test", "Two")
        deadline = time.monotonic() + 10
        while len(client.get("/api/queue").json()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        ids = sorted(m["queue_id"] for m in client.get("/api/queue").json())
        assert len(ids) == 2

        held = client.post("/api/queue/all/hold")
        assert held.status_code == 200, held.text
        assert held.json()["queue_id"] is None
        assert sorted(held.json()["report"]) == [f"{i}: held" for i in ids]
        states = [r["state"] for m in client.get("/api/queue").json() for r in m["recipients"]]
        assert states == ["held", "held"]

        deleted = client.post("/api/queue/all/delete")
        assert sorted(deleted.json()["report"]) == [f"{i}: deleted" for i in ids]
        assert client.get("/api/queue").json() == []


def test_the_queue_is_listed_shown_and_acted_on_through_queue_admin(
    web: WebServer, tmp_path: Path
) -> None:
    # Mail for another domain from a trusted client would leave; here it waits for its
    # next try in the index, as the queue does for an unreachable destination.
    index = QueueIndex(web.data_dir / "queue.db")
    index.close()
    with httpx.Client(base_url=web.url, headers=bearer(web.admin_token), timeout=20) as client:
        assert client.get("/api/queue").json() == []
        assert client.get("/api/queue/NOSUCHID").status_code == 404
        assert client.post("/api/queue/NOSUCHID/hold").status_code == 404
        assert client.post("/api/queue/NOSUCHID/explode").status_code == 422
        flushed = client.post("/api/queue/flush")
        assert flushed.status_code == 200, flushed.text
        assert flushed.json()["action"] == "flush"
        assert flushed.json()["waiting"] == []  # w0 is running and answered

        status = client.get("/api/status").json()
        assert status["worker"] == "w0"
        assert status["listeners"][0]["address"] == f"127.0.0.1:{web.smtp.port}"
        assert status["uptime"] >= 0
        domains = client.get("/api/domains").json()
        assert domains[0]["domain"] == "example.test"
        assert ADMIN in domains[0]["users"]
        users = {u["address"]: u for u in client.get("/api/users").json()}
        assert users[ADMIN]["admin"] is True
        assert users[USER]["admin"] is False
        assert users["bob@example.test"]["source"] == "configuration"


def test_the_smtp_log_shows_transcripts_with_auth_masked(web: WebServer) -> None:
    send_mail(web.smtp_address, USER, "Logged")
    with httpx.Client(base_url=web.url, headers=bearer(web.admin_token), timeout=10) as client:
        sessions = client.get("/api/sessions").json()
        lines = [line["text"] for s in sessions for line in s["lines"]]
        assert any(text.upper().startswith("MAIL FROM:<SENDER@OUTSIDE.TEST>") for text in lines)
        assert any(text.startswith("[message text:") for text in lines)
        assert not any("Logged" in text for text in lines)  # message text is not shown
