"""The SMTP log of every worker: ``pigeon serve --workers 2`` shows the sessions of both, the
answers a worker gives are bounded and well formed, and only the server's user gets them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import shutil
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from pigeon import worker_transcripts
from pigeon.auth import UserStore
from pigeon.queue.control import ControlListener, ring, socket_name
from pigeon.transcripts import Transcript, TranscriptLog
from pigeon.web.context import web_db
from pigeon.web.store import WebStore
from tests.servers import PigeonProcess, make_config, wait_for
from tests.web_helpers import ADMIN, PASSWORD, log_in

ARGS = ["--listen", "127.0.0.1:0", "--hostname", "mx.example.test", "--domain", "example.test"]


def recorded(worker: str = "w1") -> Transcript:
    log = TranscriptLog(worker=worker)
    recorder = log.open("S1", "192.0.2.1:1234")
    recorder.server(b"220 mx.example.test ESMTP\r\n")
    recorder.client(b"EHLO client.test\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    recorder.server(b"250 mx.example.test\r\n235 2.7.0 Authentication successful\r\n")
    recorder.end()
    return log.recent()[0]


def test_a_session_travels_as_one_json_line_with_its_secrets_still_masked() -> None:
    original = recorded()
    (line,) = worker_transcripts.encode([original])
    assert "\n" not in line
    assert "AGFsaWNlAHNlY3JldA" not in line
    assert worker_transcripts.decode(line) == original
    assert original.worker == "w1"
    assert ("<", "220 mx.example.test ESMTP") in original.lines
    assert (">", "AUTH PLAIN ****") in original.lines


def test_an_answer_stops_at_its_budget_newest_sessions_first() -> None:
    sessions = [recorded() for _ in range(100)]
    one = len(worker_transcripts.encode(sessions[:1])[0]) + 1
    answer = worker_transcripts.encode(sessions, budget=one * 10 + one // 2)
    assert len(answer) == 10
    assert sum(len(line) + 1 for line in answer) <= one * 10 + one // 2
    assert worker_transcripts.encode(sessions, budget=one - 1) == []
    # The real budget keeps an answer well within what a control socket's reader accepts.
    assert worker_transcripts.ANSWER_BUDGET < 1 << 20


def reachable_bytes(root: object) -> list[bytes]:
    """Every bytes object reachable from ``root``: what a memory dump would show of it."""
    found: list[bytes] = []
    seen: set[int] = set()
    todo = [root]
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        if isinstance(item, bytes):
            found.append(item)
        elif not isinstance(item, str | int | float):
            todo.extend(gc.get_referents(item))
    return found


_SECRET = b"AGFsaWNlAHNlY3JldA"
_AUTH_SESSIONS = [
    [b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", b"235 2.7.0 ok\r\n"],
    [b"ehlo c\r\nauth plain AGFsaWNlAHNlY3JldA==\r\n", b"235 2.7.0 ok\r\n"],
    [b"AUTH LOGIN\r\n", b"334 VXNlcm5hbWU6\r\n", b"AGFsaWNlAHNlY3JldA==\r\n", b"235 ok\r\n"],
]


@pytest.mark.parametrize("exchange", _AUTH_SESSIONS)
def test_no_secret_outlives_its_session_whenever_the_log_is_read(exchange: list[bytes]) -> None:
    """A session keeps its bytes unread until someone reads the log, which may be at any
    moment, even between two halves of a line. However it went, no credential is left in
    memory once the session has ended, and none is shown."""
    wire = [(not data[:3].isdigit(), data) for data in exchange]
    for index, (from_client, data) in enumerate(wire):
        for cut in range(len(data) + 1):
            log = TranscriptLog()
            recorder = log.open("S1", "192.0.2.1:1234")
            recorder.server(b"220 mx.example.test ESMTP\r\n")
            pieces = [*wire[:index], (from_client, data[:cut])]
            rest = [(from_client, data[cut:]), *wire[index + 1 :]]
            for sender, piece in pieces:
                (recorder.client if sender else recorder.server)(piece)
            log.recent()  # read here
            for sender, piece in rest:
                (recorder.client if sender else recorder.server)(piece)
            recorder.end()
            assert not any(_SECRET in data for data in reachable_bytes(log)), (index, cut)
            assert not any(_SECRET.decode() in text for _, text in log.recent()[0].lines)


def test_a_long_session_keeps_a_few_kib_and_stops_once_its_transcript_is_full() -> None:
    log = TranscriptLog()
    recorder = log.open("S1", "192.0.2.1:1234")
    kept = []
    for _ in range(2000):
        recorder.client(b"NOOP\r\n")
        recorder.server(b"250 2.0.0 Ok\r\n")
        kept.append(sum(map(len, reachable_bytes(recorder))))
    assert max(kept) < 8192
    assert kept[-1] == kept[-2]  # nothing more kept once full
    (transcript,) = log.recent()
    assert len(transcript.lines) == 301
    assert transcript.lines[-1] == ("", "… (the rest of this session is not shown)")


def test_another_thread_reads_the_log_through_the_sessions_event_loop() -> None:
    """The web app reads from a thread while sessions record in the loop: it gets every line
    recorded before it asked, made in the loop's thread (so it waits while the loop is busy).

    Watched from outside rather than by patching the recorder, which the compiled build
    does not allow."""
    log = TranscriptLog()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:

        async def record() -> None:
            log.loop = asyncio.get_running_loop()
            recorder = log.open("S1", "192.0.2.1:1234")
            recorder.server(b"220 mx.example.test ESMTP\r\n")
            recorder.client(b"NOOP\r\n")
            recorder.server(b"250 2.0.0 Ok\r\n")

        asyncio.run_coroutine_threadsafe(record(), loop).result(10)
        busy = threading.Event()
        release = threading.Event()

        def hold_the_loop() -> None:
            busy.set()
            release.wait(10)

        loop.call_soon_threadsafe(hold_the_loop)
        assert busy.wait(10)
        with concurrent.futures.ThreadPoolExecutor(1) as reader:
            reading = reader.submit(log.recent)
            # The lines are made in the loop's thread: while it is held, nothing is read.
            with pytest.raises(concurrent.futures.TimeoutError):
                reading.result(0.2)
            release.set()
            (transcript,) = reading.result(10)
        assert transcript.live
        assert transcript.lines == [
            ("<", "220 mx.example.test ESMTP"),
            (">", "NOOP"),
            ("<", "250 2.0.0 Ok"),
        ]
    finally:
        release.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "[]",
        '{"worker": "w1"}',
        '{"worker":"w1","number":1,"session":"S","client":"c","started":"x","ended":null,'
        '"lines":[]}',
        '{"worker":"w1","number":1,"session":"S","client":"c","started":1.0,"ended":null,'
        '"lines":[[">"]]}',
        '{"worker":"w1","number":1,"session":"S","client":"c","started":1.0,"ended":null,'
        '"lines":[[">", 3]]}',
    ],
)
def test_anything_but_an_encoded_session_is_ignored(line: str) -> None:
    assert worker_transcripts.decode(line) is None


def test_a_private_command_is_answered_only_to_the_servers_user_or_root(tmp_path: Path) -> None:
    """An abstract socket has no file permissions: the listener checks its peer's uid."""
    if os.getuid() != 0:
        pytest.skip("needs root, to ask as another user")

    async def secret() -> list[str]:
        return ["a@example.test"]

    async def wake() -> list[str]:
        return ["woken"]

    def ask_as_nobody(command: str) -> str:
        name = socket_name(tmp_path, "w9")
        script = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "s.settimeout(10)\n"
            "s.connect(bytes.fromhex(sys.argv[1]))\n"
            "s.sendall(sys.argv[2].encode() + b'\\n')\n"
            "data = b''\n"
            "while chunk := s.recv(4096):\n"
            "    data += chunk\n"
            "print(repr(data))\n"
        )
        # Not this test's interpreter, which may sit where that user may not go.
        python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        if python is None:
            return "no python3"
        try:
            done = subprocess.run(
                [python, "-c", script, name.encode().hex(), command],
                user=65534,
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
        except PermissionError:
            return "no python3"
        return done.stdout.strip()

    async def main() -> tuple[list[str] | None, str, str]:
        listener = await ControlListener.open(
            tmp_path, "w9", wake, private=("transcripts",), transcripts=secret
        )
        try:
            mine = await asyncio.to_thread(ring, tmp_path, "w9", timeout=10, command="transcripts")
            theirs = await asyncio.to_thread(ask_as_nobody, "transcripts")
            woken = await asyncio.to_thread(ask_as_nobody, "wake")
        finally:
            await listener.close()
        return mine, theirs, woken

    mine, theirs, woken = asyncio.run(main())
    if "no python3" in (theirs, woken):
        pytest.skip("no python3 that another user may run")
    assert mine == ["a@example.test"]
    assert theirs == "b''"  # closed without a word
    assert woken == repr(b"woken\n\n")  # the harmless commands answer anyone, as before


# -- two workers ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def conversation(port: int, name: str) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=10)
    assert client.helo(name)[0] == 250
    return client


def helo_names(sessions: list[dict[str, Any]], *, live: bool) -> dict[str, str]:
    """HELO name -> worker, of the sessions that are live (or ended)."""
    found = {}
    for session in sessions:
        if (session["ended"] is None) != live:
            continue
        for line in session["lines"]:
            if line["direction"] == ">" and line["text"].upper().startswith("HELO "):
                found[line["text"][5:]] = session["worker"]
    return found


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[PigeonProcess, httpx.Client]]:
    data = tmp_path / "data"
    data.mkdir()
    web_port = free_port()
    config = tmp_path / "pigeon.toml"
    config.write_text(
        f'[web]\nenabled = true\naddress = "127.0.0.1:{web_port}"\nadmins = ["{ADMIN}"]\n'
    )
    users = UserStore(make_config(data).users_db)
    users.add(ADMIN, PASSWORD)
    users.close()
    store = WebStore(web_db(data))
    _, token = store.create_token(ADMIN, "tests")
    store.close()
    with ExitStack() as stack:
        server = PigeonProcess(
            ["-c", str(config), *ARGS, "--data-dir", str(data), "--workers", "2"], cwd=tmp_path
        )
        stack.callback(server.close)
        client = stack.enter_context(
            httpx.Client(
                base_url=f"http://127.0.0.1:{web_port}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
        )

        def web_up() -> bool:
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(web_up, timeout=20, what="the web UI of w0")
        yield server, client


def test_the_smtp_log_shows_live_and_ended_sessions_of_every_worker(
    two_workers: tuple[PigeonProcess, httpx.Client],
) -> None:
    server, client = two_workers
    names = [f"client-{n}.test" for n in range(20)]
    listing: list[dict[str, Any]] = []

    def listed(live: bool, wanted: set[str]) -> bool:
        listing[:] = client.get("/api/sessions").json()
        return wanted <= set(helo_names(listing, live=live))

    # Held open: the kernel gives each worker some (by a hash of the source port), and the
    # log shows the sessions that are running in the other worker too.
    with ExitStack() as stack:
        for name in names[:16]:
            stack.enter_context(conversation(server.port, name))
        wait_for(lambda: listed(True, set(names[:16])), what="16 live sessions listed")
        assert set(helo_names(listing, live=True).values()) == {"w0", "w1"}
    for name in names[16:]:
        with conversation(server.port, name):
            pass  # QUIT
    wait_for(lambda: listed(False, set(names)), what="20 ended sessions listed")
    workers = helo_names(listing, live=False)
    assert set(workers.values()) == {"w0", "w1"}
    assert len(listing) <= 50
    for session in listing:
        sent = [line["text"] for line in session["lines"] if line["direction"] == ">"]
        assert sent[-1].upper() == "QUIT"
    starts = [datetime.fromisoformat(s["started"]) for s in listing]
    assert starts == sorted(starts, reverse=True)

    # The page says whose sessions they are.
    client.headers.pop("Authorization")
    log_in(client, ADMIN)
    page = client.get("/sessions/list")
    assert page.status_code == 200
    assert "worker w0" in page.text
    assert "worker w1" in page.text
    assert "every worker" in page.text
    assert server.terminate() == 0
