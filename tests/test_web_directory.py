"""The API's directory over real HTTP: administrators read and edit aliases, lists and users'
attributes, and the running SMTP server follows at once; others are refused; entries of the
configuration file are shown and refused for editing."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pigeon.config import ListConfig
from tests.web_helpers import WebServer, running_web


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    with running_web(
        tmp_path,
        aliases={"sales@example.test": ("alice@example.test",)},
        lists={"staff@example.test": ListConfig(("bob@example.test",), "alice@example.test")},
    ) as server:
        yield server


def client(web: WebServer, token: str | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=web.url,
        headers={"Authorization": f"Bearer {token or web.admin_token}"},
        timeout=10,
    )


def rcpt(web: WebServer, recipient: str, sender: str = "carol@example.test") -> int:
    with smtplib.SMTP(*web.smtp_address, timeout=10) as smtp:
        smtp.ehlo("client.test")
        smtp.mail(sender)
        code, _ = smtp.rcpt(recipient)
    return code


def test_aliases_are_listed_made_and_removed(web: WebServer) -> None:
    with client(web) as http:
        assert http.get("/api/aliases").json() == [
            {"address": "sales@example.test", "targets": ["alice@example.test"], "source": "config"}
        ]
        assert rcpt(web, "help@example.test") == 550
        made = http.put("/api/aliases/help@example.test", json={"targets": ["bob@example.test"]})
        assert made.status_code == 200, made.text
        assert made.json()["targets"] == ["bob@example.test"]
        assert rcpt(web, "help@example.test") == 250
        again = http.put("/api/aliases/help@example.test", json={"targets": ["alice@example.test"]})
        assert again.json()["targets"] == ["alice@example.test"]  # replaced, not added
        refused = http.put("/api/aliases/sales@example.test", json={"targets": ["x@y.test"]})
        assert refused.status_code == 409
        assert "configuration file" in refused.json()["detail"]
        assert (
            http.put("/api/aliases/x@far.test", json={"targets": ["a@b.test"]}).status_code == 400
        )
        assert (
            http.put("/api/aliases/help@example.test", json={"targets": ["nope"]}).status_code
            == 400
        )
        assert http.delete("/api/aliases/help@example.test").status_code == 204
        assert http.delete("/api/aliases/help@example.test").status_code == 404
        assert rcpt(web, "help@example.test") == 550


def test_lists_are_made_changed_and_deleted(web: WebServer) -> None:
    with client(web) as http:
        body = {
            "owner": "alice@example.test",
            "posting": "members",
            "members": ["bob@example.test"],
        }
        made = http.put("/api/lists/club@example.test", json=body)
        assert made.status_code == 200, made.text
        assert made.json()["source"] == "store"
        assert rcpt(web, "club@example.test", sender="stranger@far.test") == 550
        assert rcpt(web, "club@example.test", sender="bob@example.test") == 250
        body["members"] = ["carol@far.test"]
        changed = http.put("/api/lists/club@example.test", json=body).json()
        assert changed["members"] == ["carol@far.test"]  # the whole membership replaced
        assert rcpt(web, "club@example.test", sender="bob@example.test") == 550
        listed = {entry["address"]: entry["source"] for entry in http.get("/api/lists").json()}
        assert listed == {"staff@example.test": "config", "club@example.test": "store"}
        assert http.get("/api/lists/staff@example.test").json()["members"] == ["bob@example.test"]
        assert http.delete("/api/lists/staff@example.test").status_code == 409
        assert http.delete("/api/lists/club@example.test").status_code == 204
        assert http.get("/api/lists/club@example.test").status_code == 404


def test_user_attributes_are_read_and_patched(web: WebServer) -> None:
    with client(web) as http:
        before = http.get("/api/users/bob@example.test/attributes").json()
        assert (before["source"], before["route"], before["quota"]) == ("none", "mailbox", 0)
        moved = http.patch(
            "/api/users/bob@example.test/attributes", json={"moved_to": "bob@new.test"}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["route"] == "moved"
        assert rcpt(web, "bob@example.test") == 551
        back = http.patch(
            "/api/users/bob@example.test/attributes",
            json={"moved_to": "", "name": "Bob Builder", "addresses": ["builder@example.test"]},
        ).json()
        assert (back["route"], back["name"], back["addresses"]) == (
            "mailbox",
            "Bob Builder",
            ["builder@example.test"],
        )
        assert rcpt(web, "builder@example.test") == 250
        bad = http.patch("/api/users/bob@example.test/attributes", json={"quota": -1})
        assert bad.status_code == 422


def test_only_administrators_may(web: WebServer) -> None:
    with client(web, web.user_token) as http:
        assert http.get("/api/aliases").status_code == 403
        refused = http.put("/api/aliases/help@example.test", json={"targets": ["a@b.test"]})
        assert refused.status_code == 403
