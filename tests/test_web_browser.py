"""The web UI in a real browser: Debian's headless Chromium, driven by Playwright.

One test walks what a person does: log in, watch the inbox while a message is sent through
SMTP and see it appear without a reload, open a hostile HTML message and check that its
script did nothing (no change to the page, no request to the address it tries to reach),
then look at the queue as an administrator. Screenshots of the inbox and the queue are
saved under ``test-artifacts/`` in the repository.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.web_helpers import ADMIN, PASSWORD, USER, running_web, send_mail

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


_HITS: list[str] = []  # what the bait server was asked for


class _Counter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        _HITS.append(self.path)
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def bait() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback that counts the requests a hostile message makes."""
    _HITS.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _HITS
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def log_in(page: Page, url: str, address: str) -> None:
    page.goto(f"{url}/login")
    page.fill("input[name=username]", address)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda target: "/login" not in target, timeout=10_000)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_live_inbox_hostile_html_and_the_queue_in_chromium(
    tmp_path: Path, bait: tuple[str, list[str]]
) -> None:
    bait_url, hits = bait
    hostile = f"""<html><head><title>x</title></head><body>
<p id="greeting">Hello from a hostile message</p>
<script>
  parent.document.title = "pwned"; window.top.pwned = 1; top.location = "{bait_url}/nav";
  fetch("{bait_url}/fetch");
</script>
<img src="{bait_url}/image" onerror="parent.document.title='pwned'">
<link rel="stylesheet" href="{bait_url}/style.css">
</body></html>"""
    ARTIFACTS.mkdir(exist_ok=True)
    # 127.0.0.0/8 may relay: mail for another domain then waits in the queue (there is no
    # resolver), which gives the queue page something to show.
    with (
        running_web(tmp_path, trusted_networks=("127.0.0.0/8",)) as web,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            log_in(page, web.url, USER)
            assert page.url.endswith(f"/mail/{USER}")
            page.wait_for_selector("#inbox.live")  # the event stream is connected
            page.evaluate("window.stillTheSamePage = true")

            send_mail(web.smtp_address, USER, "Hostile offer", "plain text", html=hostile)
            send_mail(web.smtp_address, USER, "Lunch on Friday?", "Shall we?")
            page.wait_for_selector("text=Lunch on Friday?")
            assert page.evaluate("window.stillTheSamePage") is True  # no reload happened

            page.click("text=Hostile offer")
            frame_element = page.wait_for_selector("iframe.html-body")
            assert frame_element is not None
            frame = frame_element.content_frame()
            assert frame is not None
            frame.wait_for_selector("#greeting")
            page.wait_for_timeout(500)  # time for anything the message tried to do
            assert page.title() != "pwned"
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert page.url.startswith(web.url)
            assert hits == []
            assert frame_element.get_attribute("sandbox") == ""
            inbox_shot = ARTIFACTS / "web-inbox.png"
            page.screenshot(path=str(inbox_shot))

            page.click("text=Log out")
            page.wait_for_url("**/login")
            send_mail(web.smtp_address, "someone@remote.test", "Waits in the queue")
            log_in(page, web.url, ADMIN)
            page.goto(f"{web.url}/queue")
            page.wait_for_selector("text=someone@remote.test")
            queue_shot = ARTIFACTS / "web-queue.png"
            page.screenshot(path=str(queue_shot), full_page=True)

            page.click("table.queue form[action$='/hold'] button")
            page.wait_for_selector("table.queue .state-held")

            # The actions for every message: release all, hold all, then (after one message
            # is bounced) delete all. Bounce and delete ask first.
            send_mail(web.smtp_address, "someone@remote.test", "Waits in the queue too")
            for _ in range(100):  # until the index has it (it is written every 50 ms)
                page.goto(f"{web.url}/queue")
                if page.locator("table.queue code").count() == 2:
                    break
                page.wait_for_timeout(100)
            assert page.locator("table.queue code").count() == 2
            page.click("text=Release all")
            page.wait_for_selector("table.queue .state-held", state="detached")
            page.click("text=Hold all")
            page.wait_for_function(
                "document.querySelectorAll('table.queue .state-held').length == 2"
            )
            first = page.locator("table.queue code").first.inner_text()
            page.once("dialog", lambda dialog: dialog.accept())
            page.click(f"form[action='/queue/{first}/bounce'] button")
            page.wait_for_selector(f"text={first}: returned to sender")
            returned = page.locator("table.queue td", has_text="<>")  # the bounce, from <>
            for _ in range(100):
                page.goto(f"{web.url}/queue")
                if returned.count():
                    break
                page.wait_for_timeout(100)
            assert returned.count() == 1
            assert page.locator("table.queue code").count() == 2  # the other and the bounce
            assert first not in page.locator("table.queue").inner_text()
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("text=Delete all")
            page.wait_for_selector("text=The queue is empty")
        finally:
            browser.close()
    print(f"screenshots: {inbox_shot} {queue_shot}")
