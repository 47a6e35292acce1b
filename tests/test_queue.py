"""The queue end to end: deferral, retry, expiry and bounces against Postfix's smtp-sink found
through a DNS server on loopback; connection sharing; the index across a SIGKILL; and the
``pigeon queue`` commands acting on a running server (and on a stopped one).

smtp-sink listens on 127.0.0.4 (Linux answers all of 127/8) at the port Pigeon is told to
deliver to, so it can be started and stopped under a server that keeps running: a stopped
sink is a destination that refuses connections.
"""

from __future__ import annotations

import email
import email.policy
import json
import shutil
import smtplib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import replace
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from pigeon.cli import main as pigeon_main
from pigeon.config import Config, QueueConfig
from pigeon.queue import QueueIndex, QueueIndexError
from tests.dns_server import DNSServer
from tests.peers import SMTP_SINK, SinkAt, free_port
from tests.servers import PigeonProcess, ThreadedServer, make_config, read_maildir, wait_for

pytestmark = pytest.mark.skipif(SMTP_SINK is None, reason="Postfix's smtp-sink is not installed")

SINK_HOST = "127.0.0.4"
RECORDS = {
    ("sink.test", "MX"): ["10 mx.sink.test."],
    ("mx.sink.test", "A"): [SINK_HOST],
}
MESSAGE = b"From: alice@example.test\r\nSubject: queued\r\n\r\nthrough the queue\r\n"


class Clock:
    """The queue's clock: real time plus however far a test has moved it on."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    with DNSServer(RECORDS) as server:
        yield server


def queue_config(tmp_path: Path, dns_server: DNSServer, **queue: Any) -> Config:
    config = make_config(
        tmp_path / "data",
        trusted_networks=("127.0.0.0/8",),
        resolver=(dns_server.nameserver,),
    )
    return replace(config, queue=QueueConfig(**queue))


def send(
    server: ThreadedServer | tuple[str, int],
    recipients: list[str],
    *,
    sender: str = "alice@example.test",
    mail_options: tuple[str, ...] = (),
    rcpt_options: tuple[str, ...] = (),
) -> None:
    address = server if isinstance(server, tuple) else server.address
    with smtplib.SMTP(*address, timeout=10) as client:
        refused = client.sendmail(
            sender, recipients, MESSAGE, mail_options=mail_options, rcpt_options=rcpt_options
        )
    assert refused == {}


def pigeon(*args: str) -> tuple[int, str]:
    """``pigeon ARGS`` in this process: (exit status, what it printed)."""
    out = StringIO()
    with redirect_stdout(out):
        status = pigeon_main(list(args))
    return status, out.getvalue()


def queue_json(data_dir: Path) -> list[dict[str, Any]]:
    status, out = pigeon("queue", "list", "--json", "--data-dir", str(data_dir))
    assert status == 0, out
    listed: list[dict[str, Any]] = json.loads(out)
    return listed


def states(data_dir: Path) -> list[str]:
    return [r["state"] for m in queue_json(data_dir) for r in m["recipients"]]


def wait_states(data_dir: Path, condition: Callable[[list[str]], bool], what: str) -> None:
    wait_for(lambda: condition(states(data_dir)), timeout=20, what=what)


def dsn_blocks(raw: bytes) -> list[email.message.Message]:
    report = email.message_from_bytes(raw, policy=email.policy.default)
    status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    payload = status[0].get_payload()
    assert isinstance(payload, list)
    return [block for block in payload if isinstance(block, email.message.Message)]


def alice_mail(config: Config) -> list[bytes]:
    return read_maildir(config.mail_dir / "example.test" / "alice")


# -- deferral, retry, expiry, bounce --------------------------------------------------------------
def test_defer_then_retry_then_delivered(tmp_path: Path, dns_server: DNSServer) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server, first_retry=1.0)
    with ThreadedServer(config, outbound_port=port) as server:
        send(server, ["dave@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"], "a deferral")
        (message,) = queue_json(config.data_dir)
        (dave,) = message["recipients"]
        assert dave["status"] == "4.4.1"
        assert "mx.sink.test" in dave["last_reply"]
        assert dave["next_attempt"] > message["arrival"]
        with SinkAt(tmp_path / "sink.log", SINK_HOST, port) as sink:
            wait_states(config.data_dir, lambda s: s == [], "delivery on retry")
            assert "RCPT TO:<dave@sink.test>" in sink.commands()
    assert alice_mail(config) == []  # no bounce, no warning


def test_defer_then_expire_then_bounce(tmp_path: Path, dns_server: DNSServer) -> None:
    port = free_port(SINK_HOST)
    clock = Clock()
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    with (
        SinkAt(tmp_path / "sink.log", SINK_HOST, port, "-r", "rcpt") as sink,  # 4xx at RCPT
        ThreadedServer(config, outbound_port=port, clock=clock) as server,
    ):
        send(server, ["dave@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"], "a deferral")
        clock.ahead = 5 * 86400 + 60  # five days later, still refused
        status, out = pigeon("queue", "flush", "--data-dir", str(config.data_dir))
        assert status == 0
        assert "flushed" in out
        wait_for(lambda: len(alice_mail(config)) == 1, what="the bounce")
        assert sink.commands().count("RCPT TO:<dave@sink.test>") == 2
    (bounce,) = alice_mail(config)
    assert bounce.startswith(b"Return-Path: <>\n")
    per_message, block = dsn_blocks(bounce)
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Arrival-Date"]
    assert block["Final-Recipient"] == "rfc822; dave@sink.test"
    assert block["Action"] == "failed"
    assert block["Status"] == "5.4.7"
    assert block["Remote-MTA"] == "dns; mx.sink.test"
    assert "delivery time expired" in block["Diagnostic-Code"]
    assert "said: 450" in block["Diagnostic-Code"]  # smtp-sink's own reply
    assert states(config.data_dir) == []


def test_permanent_refusal_bounces_at_once_with_the_remote_reply(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server)
    with (
        SinkAt(tmp_path / "sink.log", SINK_HOST, port, "-f", "rcpt"),  # 5xx at RCPT
        ThreadedServer(config, outbound_port=port) as server,
    ):
        send(server, ["dave@sink.test", "erin@sink.test"])
        wait_for(lambda: len(alice_mail(config)) == 1, what="the bounce")
    (bounce,) = alice_mail(config)  # one bounce for both
    _, *blocks = dsn_blocks(bounce)
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; dave@sink.test",
        "rfc822; erin@sink.test",
    ]
    assert {b["Status"][0] for b in blocks} == {"5"}
    assert all("mx.sink.test[127.0.0.4] said: 5" in b["Diagnostic-Code"] for b in blocks)


def test_a_drop_mid_data_is_a_deferral_with_its_cause(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    with (
        SinkAt(tmp_path / "sink.log", SINK_HOST, port, "-q", "."),  # hangs up at the end dot
        ThreadedServer(config, outbound_port=port) as server,
    ):
        send(server, ["dave@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"], "a deferral")
    (message,) = queue_json(config.data_dir)
    (dave,) = message["recipients"]
    assert dave["status"] == "4.4.2"
    assert "may be delivered twice" in dave["last_reply"]


# -- sharing connections --------------------------------------------------------------------------
def test_waiting_messages_share_one_connection(tmp_path: Path, dns_server: DNSServer) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    with ThreadedServer(config, outbound_port=port) as server:
        for recipients in (["a@sink.test"], ["b@sink.test"], ["c@sink.test", "d@sink.test"]):
            send(server, recipients)
        wait_states(config.data_dir, lambda s: s == ["deferred"] * 4, "four deferrals")
        with SinkAt(tmp_path / "sink.log", SINK_HOST, port) as sink:
            status, out = pigeon(
                "queue", "flush", "--domain", "sink.test", "--data-dir", str(config.data_dir)
            )
            assert status == 0
            assert out.count("flushed") == 3
            wait_states(config.data_dir, lambda s: s == [], "every message delivered")
            commands = sink.commands()
    # One session, three transactions with RSET between, the last with two RCPTs.
    assert sink.sessions() == 1
    assert sum(c.startswith("MAIL FROM:") for c in commands) == 3
    assert sum(c == "RSET" for c in commands) == 2
    rcpts = [c for c in commands if c.startswith("RCPT TO:")]
    assert len(rcpts) == 4
    assert commands.index("RCPT TO:<d@sink.test>") == commands.index("RCPT TO:<c@sink.test>") + 1


# -- pigeon queue ---------------------------------------------------------------------------------
def test_queue_commands_list_show_hold_release_delete_bounce(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    data = str(config.data_dir)
    with ThreadedServer(config, outbound_port=port) as server:
        status, out = pigeon("queue", "list", "--data-dir", data)
        assert (status, out) == (0, "Mail queue is empty\n")
        send(server, ["dave@sink.test", "alice@example.test"])
        send(server, ["erin@sink.test"])
        wait_states(config.data_dir, lambda s: s.count("deferred") == 2, "two deferrals")
        first, second = (m["queue_id"] for m in queue_json(config.data_dir))

        status, out = pigeon("queue", "list", "--data-dir", data)
        assert status == 0
        assert first in out
        assert "<alice@example.test>" in out
        assert "deferred  dave@sink.test" in out
        assert "delivered alice@example.test" in out
        assert "-- 2 messages" in out

        status, out = pigeon("queue", "show", first, "--data-dir", data)
        assert status == 0
        assert "Subject: queued" in out
        assert "History:" in out
        assert "delivered 2.0.0" in out
        assert "deferred 4.4.1" in out
        status, out = pigeon("queue", "show", first, "--json", "--data-dir", data)
        shown = json.loads(out)
        assert shown["header"].startswith("Received: from ")
        assert [a["outcome"] for a in shown["attempts"]] == ["delivered", "deferred"]

        assert pigeon("queue", "hold", first, "--data-dir", data) == (0, f"{first}: held\n")
        assert states(config.data_dir) == ["held", "delivered", "deferred"]
        with SinkAt(tmp_path / "sink.log", SINK_HOST, port) as sink:
            # A flush of everything leaves the held message alone.
            status, out = pigeon("queue", "flush", "--data-dir", data)
            assert out == f"{second}: flushed\n"
            wait_states(config.data_dir, lambda s: s == ["held", "delivered"], "erin delivered")
            assert "RCPT TO:<dave@sink.test>" not in sink.commands()
            status, out = pigeon("queue", "release", first, "--json", "--data-dir", data)
            assert json.loads(out) == {
                "action": "release",
                "done": [f"{first}: released"],
                "waiting_for": [],
                "unknown": [],
            }
            wait_states(config.data_dir, lambda s: s == [], "dave delivered after release")
            assert "RCPT TO:<dave@sink.test>" in sink.commands()

        send(server, ["frank@sink.test"])
        send(server, ["gina@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred", "deferred"], "two more")
        third, fourth = (m["queue_id"] for m in queue_json(config.data_dir))
        assert pigeon("queue", "delete", third, "--data-dir", data) == (0, f"{third}: deleted\n")
        assert pigeon("queue", "bounce", fourth, "--data-dir", data) == (
            0,
            f"{fourth}: returned to sender\n",
        )
        # Alice has the copy of the first message, and now the returned one.
        wait_for(lambda: len(alice_mail(config)) == 2, what="the returned message")
        assert states(config.data_dir) == []
        status, out = pigeon("queue", "show", third, "--data-dir", data)
        assert status == 66
    returned = next(m for m in alice_mail(config) if b"delivery-status" in m)
    assert len(alice_mail(config)) == 2  # the deleted message was not returned
    _, block = dsn_blocks(returned)
    assert block["Final-Recipient"] == "rfc822; gina@sink.test"
    assert block["Status"] == "5.4.7"
    assert "returned by the mail administrator" in block["Diagnostic-Code"]


@contextmanager
def three_deferred(tmp_path: Path, dns_server: DNSServer) -> Iterator[tuple[Config, list[str]]]:
    """A server with three messages deferred (their destination does not answer), and their
    queue ids in arrival order."""
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    with ThreadedServer(config, outbound_port=free_port(SINK_HOST)) as server:
        for name in ("dave", "erin", "frank"):
            send(server, [f"{name}@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"] * 3, "three deferrals")
        yield config, [m["queue_id"] for m in queue_json(config.data_dir)]


def test_hold_and_delete_all_act_on_every_message(tmp_path: Path, dns_server: DNSServer) -> None:
    """postsuper's ALL: --all holds, releases, deletes or bounces every message at once."""
    with three_deferred(tmp_path, dns_server) as (config, ids):
        data = str(config.data_dir)
        status, out = pigeon("queue", "hold", "--all", "--data-dir", data)
        assert status == 0
        assert sorted(out.splitlines()) == sorted(f"{i}: held" for i in ids)
        assert states(config.data_dir) == ["held"] * 3

        status, out = pigeon("queue", "delete", "--all", "--json", "--data-dir", data)
        assert status == 0
        assert sorted(json.loads(out)["done"]) == sorted(f"{i}: deleted" for i in ids)
        assert queue_json(config.data_dir) == []
        status, out = pigeon("queue", "delete", "--all", "--data-dir", data)
        assert (status, out) == (0, "nothing to delete\n")
    assert alice_mail(config) == []  # deleting tells nobody


def test_several_ids_in_one_command(
    tmp_path: Path, dns_server: DNSServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """As postsuper takes several ids: each is acted on, and one not in the queue is named
    (exit 66) without stopping the others."""
    with three_deferred(tmp_path, dns_server) as (config, ids):
        data = str(config.data_dir)
        first, second, third = ids
        capsys.readouterr()

        status, out = pigeon("queue", "hold", first, "NOSUCHID", third, first, "--data-dir", data)
        assert status == 66
        assert sorted(out.splitlines()) == sorted([f"{first}: held", f"{third}: held"])
        assert capsys.readouterr().err == "pigeon queue hold: no message NOSUCHID in the queue\n"
        assert states(config.data_dir) == ["held", "deferred", "held"]

        status, out = pigeon("queue", "delete", first, second, "--json", "--data-dir", data)
        assert status == 0
        report = json.loads(out)
        assert sorted(report["done"]) == sorted([f"{first}: deleted", f"{second}: deleted"])
        assert report["unknown"] == []
        assert [m["queue_id"] for m in queue_json(config.data_dir)] == [third]

        # None of them in the queue: nothing is asked of anyone, and each is named.
        status, out = pigeon("queue", "release", first, "NOSUCHID", "--data-dir", data)
        assert (status, out) == (66, "")
        assert capsys.readouterr().err == (
            f"pigeon queue release: no message {first} in the queue\n"
            "pigeon queue release: no message NOSUCHID in the queue\n"
        )
        assert states(config.data_dir) == ["held"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "give a queue id, or --all for every message"),
        (("SOMEID", "--all"), "give queue ids or --all, not both"),
    ],
)
def test_an_action_names_its_messages_or_says_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], complaint: str
) -> None:
    QueueIndex(tmp_path / "data" / "queue.db").close()
    status, out = pigeon("queue", "delete", *args, "--data-dir", str(tmp_path / "data"))
    assert (status, out) == (64, "")
    assert capsys.readouterr().err == f"pigeon queue delete: {complaint}\n"


def test_unknown_id_and_bad_usage_are_named(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    QueueIndex(tmp_path / "data" / "queue.db").close()
    status, _ = pigeon("queue", "hold", "NOSUCHID", "--data-dir", data)
    assert status == 66
    status, _ = pigeon("queue", "flush", "X", "--domain", "d.test", "--data-dir", data)
    assert status == 64


# -- restarts -------------------------------------------------------------------------------------
def relayhost_config(tmp_path: Path, port: int, **queue: Any) -> Path:
    """A config file for `pigeon serve` that relays everything to the sink (relayhost)."""
    path = tmp_path / "pigeon.toml"
    settings = "".join(f"{k} = {json.dumps(v)}\n" for k, v in queue.items())
    path.write_text(
        'hostname = "mx.example.test"\n'
        'data_dir = "data"\n'
        'trusted_networks = ["127.0.0.0/8"]\n'
        "[[listen]]\n"
        'address = "127.0.0.1:0"\n'
        '[domains."example.test"]\n'
        'users = ["alice"]\n'
        "[queue]\n"
        f'relayhost = "{SINK_HOST}:{port}"\n' + settings
    )
    return path


def test_sigkill_loses_nothing_and_the_index_resumes(tmp_path: Path) -> None:
    port = free_port(SINK_HOST)
    config_path = relayhost_config(tmp_path, port, first_retry=1.0)
    data_dir = tmp_path / "data"
    alice = data_dir / "mail" / "example.test" / "alice"
    first = PigeonProcess(["-c", str(config_path), "--workers", "1"], cwd=tmp_path)
    try:
        send(("127.0.0.1", first.port), ["dave@remote.test", "alice@example.test"])
        send(("127.0.0.1", first.port), ["erin@remote.test"])
        wait_states(data_dir, lambda s: s.count("deferred") == 2, "two deferrals")
        held_id = queue_json(data_dir)[1]["queue_id"]
        assert pigeon("queue", "hold", held_id, "--data-dir", str(data_dir))[0] == 0
        first.kill()  # SIGKILL: no goodbye, no flush
    finally:
        first.close()
    assert len(read_maildir(alice)) == 1
    before = queue_json(data_dir)
    assert [r["state"] for m in before for r in m["recipients"]] == [
        "deferred",
        "delivered",
        "held",
    ]

    with SinkAt(tmp_path / "sink.log", SINK_HOST, port) as sink:
        second = PigeonProcess(["-c", str(config_path), "--workers", "1"], cwd=tmp_path)
        try:
            # Dave is retried when his time comes; erin stays held across the restart.
            wait_states(data_dir, lambda s: s == ["held"], "dave delivered after the restart")
            assert "RCPT TO:<erin@remote.test>" not in sink.commands()
            assert pigeon("queue", "release", held_id, "--data-dir", str(data_dir))[0] == 0
            wait_states(data_dir, lambda s: s == [], "erin delivered once released")
            rcpts = [c for c in sink.commands() if c.startswith("RCPT")]
        finally:
            second.terminate()
            second.close()
    assert rcpts == ["RCPT TO:<dave@remote.test>", "RCPT TO:<erin@remote.test>"]
    assert len(read_maildir(alice)) == 1  # the local copy was not made twice


def test_requests_made_while_stopped_wait_for_the_start(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    data = str(config.data_dir)
    with ThreadedServer(config, outbound_port=free_port(SINK_HOST)) as server:
        send(server, ["dave@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"], "a deferral")
    (message,) = queue_json(config.data_dir)
    status, out = pigeon("queue", "hold", message["queue_id"], "--data-dir", data)
    assert status == 0
    assert "is not running" in out
    status, out = pigeon("queue", "check", "--data-dir", data)
    assert status == 65
    assert "waits for worker w0" in out
    with ThreadedServer(config, outbound_port=free_port(SINK_HOST)):
        wait_states(config.data_dir, lambda s: s == ["held"], "the hold carried out at start")
        assert pigeon("queue", "check", "--data-dir", data) == (0, "queue index and spool agree\n")


def test_check_names_a_missing_spool_file_and_delete_forgets_it(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    config = queue_config(tmp_path, dns_server, first_retry=3600)
    data = str(config.data_dir)
    with ThreadedServer(config, outbound_port=free_port(SINK_HOST)) as server:
        send(server, ["dave@sink.test"])
        wait_states(config.data_dir, lambda s: s == ["deferred"], "a deferral")
    (message,) = queue_json(config.data_dir)
    shutil.rmtree(config.spool_dir / "segments")  # lost to an accident
    status, out = pigeon("queue", "check", "--data-dir", data)
    assert status == 65
    assert f"{message['queue_id']}: spool segment" in out
    assert "is missing" in out
    assert "fix: restore " in out
    assert f"pigeon queue delete {message['queue_id']}" in out
    status, out = pigeon("queue", "show", message["queue_id"], "--data-dir", data)
    assert status == 0
    assert "not readable" in out
    # Started again, the server reports the row and keeps it; nothing is silently dropped.
    with ThreadedServer(config, outbound_port=free_port(SINK_HOST)):
        assert [m["queue_id"] for m in queue_json(config.data_dir)] == [message["queue_id"]]
        status, out = pigeon("queue", "delete", message["queue_id"], "--data-dir", data)
        assert status == 0
        assert "deleted from the index" in out
        assert queue_json(config.data_dir) == []
        assert pigeon("queue", "check", "--data-dir", data)[0] == 0


def test_an_index_that_cannot_be_opened_is_reported_with_the_fix(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    config = queue_config(tmp_path, dns_server)
    config.data_dir.mkdir(parents=True)
    config.queue_index.write_bytes(b"this is not a database" * 100)
    status, out = pigeon("queue", "check", "--data-dir", str(config.data_dir))
    assert status == 65
    assert "cannot be opened" in out
    assert "mv " in out
    assert "rebuilt from the spool" in out
    with pytest.raises(Exception, match="cannot be opened"), ThreadedServer(config):
        pass
    with pytest.raises(QueueIndexError):
        QueueIndex(config.queue_index, readonly=True)


# -- DSN (RFC 3461) -------------------------------------------------------------------------------
def test_dsn_parameters_are_checked(tmp_path: Path, dns_server: DNSServer) -> None:
    config = queue_config(tmp_path, dns_server)
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        assert client.mail("alice@example.test", ["RET=HDRS", "ENVID=abc+2Bdef"])[0] == 250
        assert client.rcpt("alice@example.test", ["NOTIFY=SUCCESS,DELAY"])[0] == 250
        assert client.rcpt("alice@example.test", ["ORCPT=rfc822;a+40b.test"])[0] == 250
        assert client.rcpt("alice@example.test", ["NOTIFY=NEVER,SUCCESS"])[0] == 501
        assert client.rcpt("alice@example.test", ["NOTIFY=SOMETIMES"])[0] == 501
        assert client.rcpt("alice@example.test", ["ORCPT=no-semicolon"])[0] == 501
        assert client.rcpt("alice@example.test", ["COLOR=blue"])[0] == 555
        client.rset()
        assert client.mail("alice@example.test", ["RET=SOME"])[0] == 501
        assert client.mail("alice@example.test", ["ENVID=has=equals"])[0] == 501


def test_success_notice_when_asked_with_envid_and_orcpt(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    config = queue_config(tmp_path, dns_server)
    with ThreadedServer(config) as server:
        send(
            server,
            ["bob@example.test"],
            mail_options=("ENVID=order+2B42",),
            rcpt_options=("NOTIFY=SUCCESS", "ORCPT=rfc822;bob+40example.test"),
        )
        wait_for(lambda: len(alice_mail(config)) == 1, what="the success notice")
    (notice,) = alice_mail(config)
    report = email.message_from_bytes(notice, policy=email.policy.default)
    assert report["Subject"] == "Successful Mail Delivery Report"
    per_message, block = dsn_blocks(notice)
    assert per_message["Original-Envelope-Id"] == "order+42"
    assert block["Original-Recipient"] == "rfc822; bob@example.test"
    assert block["Action"] == "delivered"
    assert block["Status"] == "2.0.0"


def test_notify_never_means_no_bounce_and_hdrs_returns_the_header(
    tmp_path: Path, dns_server: DNSServer
) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server)
    with (
        SinkAt(tmp_path / "sink.log", SINK_HOST, port, "-f", "rcpt"),
        ThreadedServer(config, outbound_port=port) as server,
    ):
        send(server, ["quiet@sink.test"], rcpt_options=("NOTIFY=NEVER",))
        send(server, ["loud@sink.test"], mail_options=("RET=HDRS",))
        wait_for(lambda: len(alice_mail(config)) == 1, what="one bounce")
        server.wait_idle()
        wait_states(config.data_dir, lambda s: s == [], "both finished")
    (bounce,) = alice_mail(config)
    _, block = dsn_blocks(bounce)
    assert block["Final-Recipient"] == "rfc822; loud@sink.test"
    report = email.message_from_bytes(bounce, policy=email.policy.default)
    returned = list(report.iter_parts())[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"through the queue" not in bounce  # the body stayed home


@pytest.mark.parametrize("sink_dsn", [True, False], ids=["next-hop-dsn", "next-hop-no-dsn"])
def test_dsn_requests_go_to_the_next_hop_that_offers_dsn(
    tmp_path: Path, dns_server: DNSServer, sink_dsn: bool
) -> None:
    port = free_port(SINK_HOST)
    config = queue_config(tmp_path, dns_server)
    options = () if sink_dsn else ("-N",)  # -N: smtp-sink does not offer DSN
    with (
        SinkAt(tmp_path / "sink.log", SINK_HOST, port, *options) as sink,
        ThreadedServer(config, outbound_port=port) as server,
    ):
        send(
            server,
            ["dave@sink.test"],
            mail_options=("RET=HDRS", "ENVID=e1"),
            rcpt_options=("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;dave@sink.test"),
        )
        wait_states(config.data_dir, lambda s: s == [], "delivered")
        server.wait_idle()
        commands = sink.commands()
    mail = next(c for c in commands if c.startswith("MAIL FROM:"))
    rcpt = next(c for c in commands if c.startswith("RCPT TO:"))
    if sink_dsn:
        assert "RET=HDRS" in mail
        assert "ENVID=e1" in mail
        assert rcpt == "RCPT TO:<dave@sink.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;dave@sink.test"
        assert alice_mail(config) == []  # success is the next hop's to report now
    else:
        assert "RET=" not in mail
        assert "NOTIFY" not in rcpt
        wait_for(lambda: len(alice_mail(config)) == 1, what="the relayed notice")
        _, block = dsn_blocks(alice_mail(config)[0])
        assert block["Action"] == "relayed"
        assert block["Remote-MTA"] == "dns; mx.sink.test"
