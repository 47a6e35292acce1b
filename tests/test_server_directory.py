"""The directory end to end: aliases, mailing lists, forwards, moved users, sub-addressing,
quotas, locked mailboxes and loops, as a client sees them over SMTP and as a mail reader
(Dovecot over IMAP) sees the Maildirs; VRFY, EXPN and HELP STATUS by listener policy; and
the ``pigeon alias``/``list``/``user set`` commands changing a running server."""

from __future__ import annotations

import email
import email.policy
import fcntl
import os
import smtplib
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import replace
from io import StringIO
from pathlib import Path

import pytest

from pigeon.cli import main as pigeon_main
from pigeon.config import (
    Config,
    DirectoryConfig,
    DomainConfig,
    ListConfig,
    ListenerConfig,
    UserConfig,
    load_config,
)
from pigeon.delivery.local_checks import LOCK_NAME
from pigeon.policy import EXPN_LIMIT
from tests.dovecot import DOVECOT, Dovecot
from tests.servers import ThreadedServer, make_config, read_maildir, wait_for

BODY = b"From: carol@example.test\r\nSubject: directory\r\n\r\nhello\r\n"


def directory_config(tmp_path: Path, **listener: object) -> Config:
    config = make_config(tmp_path / "data", trusted_networks=("127.0.0.0/8",))
    return replace(
        config,
        listen=(ListenerConfig(address="127.0.0.1:0", **listener),),  # type: ignore[arg-type]
        domains={"example.test": DomainConfig(users=("alice", "bob", "carol", "erin", "gina"))},
        users={
            "alice@example.test": UserConfig(name="Alice Liddell", addresses=("al@example.test",)),
            "bob@example.test": UserConfig(name="Bob Builder"),
            "dave@example.test": UserConfig(forward=("dave@elsewhere.test",)),
            "erin@example.test": UserConfig(
                forward=("erin@example.test", "erin@elsewhere.test")  # keeps a copy
            ),
            "frank@example.test": UserConfig(moved_to="frank@new.test"),
        },
        aliases={
            "sales@example.test": ("alice@example.test", "bob@example.test"),
            "loop1@example.test": ("loop2@example.test",),
            "loop2@example.test": ("loop1@example.test",),
        },
        lists={
            "team@example.test": ListConfig(
                members=("alice@example.test", "bob@example.test", "sales@example.test"),
                owner="carol@example.test",
                posting="members",
            ),
            "big@example.test": ListConfig(
                members=tuple(f"m{n}@elsewhere.test" for n in range(10_000)),
                owner="carol@example.test",
            ),
        },
        directory=DirectoryConfig(quota_exceeded="bounce"),
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    with ThreadedServer(directory_config(tmp_path, vrfy="on", expn="on")) as running:
        yield running


def mailbox(server: ThreadedServer, user: str) -> Path:
    return server.config.mail_dir / "example.test" / user


def rcpt(
    server: ThreadedServer, recipient: str, sender: str = "carol@example.test"
) -> tuple[int, bytes]:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender)
        code, text = client.rcpt(recipient)
        client.rset()
    return code, text


def send(server: ThreadedServer, recipients: list[str], sender: str = "carol@example.test") -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        assert client.sendmail(sender, recipients, BODY) == {}


def dsn_status(raw: bytes) -> list[tuple[str, str, str]]:
    report = email.message_from_bytes(raw, policy=email.policy.default)
    status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    payload = status[0].get_payload()
    assert isinstance(payload, list)
    return [
        (str(b["Final-Recipient"]), str(b["Action"]), str(b["Status"]))
        for b in payload[1:]
        if isinstance(b, email.message.Message)
    ]


# -- RCPT replies ----------------------------------------------------------------------------------
def test_rcpt_replies_come_from_the_directory(server: ThreadedServer) -> None:
    assert rcpt(server, "alice@example.test")[0] == 250
    assert rcpt(server, "al@example.test")[0] == 250  # an extra address
    assert rcpt(server, "alice+news@example.test")[0] == 250  # sub-address
    assert rcpt(server, "sales@example.test")[0] == 250
    code, text = rcpt(server, "dave@example.test")
    assert code == 251
    assert text == b"2.1.5 User not local; will forward to <dave@elsewhere.test>"
    code, text = rcpt(server, "frank@example.test")
    assert code == 551
    assert text == b"5.1.6 User not local; please try <frank@new.test>"
    code, text = rcpt(server, "team@example.test", sender="stranger@elsewhere.test")
    assert code == 550
    assert b"5.7.1" in text
    assert b"only its members may post" in text
    assert rcpt(server, "team@example.test", sender="bob@example.test")[0] == 250
    assert rcpt(server, "nobody@example.test")[0] == 550


def test_quota_is_checked_at_rcpt_and_again_at_delivery(server: ThreadedServer) -> None:
    gina = mailbox(server, "gina")
    send(server, ["gina@example.test"])
    server.wait_idle()
    (first,) = read_maildir(gina)
    size = len(first)
    # Room for two and a half such messages, set while the server runs.
    quota = str(size * 5 // 2)
    data = ["--data-dir", str(server.config.data_dir)]
    assert run_cli("user", "set", "gina@example.test", "--quota", quota, *data)[0] == 0
    send(server, ["gina@example.test"])
    server.wait_idle()
    assert len(read_maildir(gina)) == 2
    # The third does not fit at delivery (quota_exceeded = "bounce") ...
    send(server, ["gina@example.test"])
    wait_for(lambda: len(read_maildir(mailbox(server, "carol"))) == 1, what="the bounce")
    ((recipient, action, status),) = dsn_status(read_maildir(mailbox(server, "carol"))[0])
    assert (recipient, action, status) == ("rfc822; gina@example.test", "failed", "5.2.2")
    assert len(read_maildir(gina)) == 2
    # ... and RCPT refuses one whose declared SIZE cannot fit, before any data is sent.
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        client.mail("carol@example.test", [f"SIZE={size}"])
        code, text = client.rcpt("gina@example.test")
    assert (code, text) == (552, b"5.2.2 <gina@example.test>: mailbox full")


def test_a_locked_mailbox_is_busy_and_delivery_waits_for_it(tmp_path: Path) -> None:
    config = directory_config(tmp_path)
    config = replace(config, queue=replace(config.queue, first_retry=0.5))
    with ThreadedServer(config) as server:
        send(server, ["bob@example.test"])  # makes the Maildir
        server.wait_idle()
        bob = mailbox(server, "bob")
        lock = os.open(bob / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            time.sleep(1.1)  # a mailbox without a lock file is not looked at again for 1 s
            assert rcpt(server, "bob@example.test") == (
                450,
                b"4.2.1 <bob@example.test>: mailbox busy, try again later",
            )
            send(server, ["sales@example.test"])  # bob gets it through the alias
            wait_for(lambda: len(read_maildir(mailbox(server, "alice"))) == 1, what="alice")
            assert len(read_maildir(bob)) == 1  # deferred, not written
        finally:
            os.close(lock)  # released: the retry gets through
        wait_for(lambda: len(read_maildir(bob)) == 2, what="bob's copy after the lock")


# -- expansions ------------------------------------------------------------------------------------
def test_aliases_lists_and_forwards_fill_the_right_maildirs(server: ThreadedServer) -> None:
    send(server, ["sales@example.test"])
    send(server, ["team@example.test"], sender="bob@example.test")
    send(server, ["erin@example.test", "alice+tag@example.test"])
    server.wait_idle()
    alice = read_maildir(mailbox(server, "alice"))
    bob = read_maildir(mailbox(server, "bob"))
    # sales: one each. team: one each directly and one more each through sales (a list may
    # hold an alias; the two copies are two deliveries). erin's own copy; alice+tag.
    assert len(alice) == 4
    assert len(bob) == 3
    assert len(read_maildir(mailbox(server, "erin"))) == 1
    through_alias = [m for m in alice if b"Delivered-To: sales@example.test" in m]
    assert through_alias
    from_list = [m for m in alice if b"Delivered-To: team@example.test" in m]
    assert from_list
    assert all(m.startswith(b"Return-Path: <carol@example.test>") for m in from_list)
    # erin's forward to elsewhere.test waits in the queue (no route there in this test).
    _, out = run_cli("queue", "list", "--json", "--data-dir", str(server.config.data_dir))
    assert '"erin@elsewhere.test"' in out


@pytest.mark.skipif(DOVECOT is None or os.geteuid() != 0, reason="needs dovecot and root")
def test_a_mail_reader_sees_what_aliases_and_lists_delivered(server: ThreadedServer) -> None:
    send(server, ["sales@example.test"])
    send(server, ["team@example.test"], sender="alice@example.test")
    server.wait_idle()
    with Dovecot({"alice": mailbox(server, "alice"), "bob": mailbox(server, "bob")}) as imap:
        for user in ("alice", "bob"):
            seen = imap.messages(user)
            assert len(seen) == 3, imap.log()
            parsed = [email.message_from_bytes(m, policy=email.policy.default) for m in seen]
            assert {str(m["Subject"]) for m in parsed} == {"directory"}
            delivered_to = {str(v) for m in parsed for v in m.get_all("Delivered-To", [])}
            assert delivered_to == {
                f"{user}@example.test",
                "sales@example.test",
                "team@example.test",
            }


def test_a_forwarding_loop_is_stopped_and_bounced(server: ThreadedServer) -> None:
    send(server, ["loop1@example.test"])
    wait_for(lambda: len(read_maildir(mailbox(server, "carol"))) == 1, what="the loop bounce")
    server.wait_idle()
    ((recipient, action, status),) = dsn_status(read_maildir(mailbox(server, "carol"))[0])
    assert (action, status) == ("failed", "5.4.6")
    assert recipient == "rfc822; loop1@example.test"
    assert (
        b"mail forwarding loop for loop1@example.test" in read_maildir(mailbox(server, "carol"))[0]
    )
    assert len(read_maildir(mailbox(server, "carol"))) == 1  # once, not round and round


def test_success_notice_for_an_alias_says_expanded(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        refused = client.sendmail(
            "carol@example.test", ["sales@example.test"], BODY, rcpt_options=["NOTIFY=SUCCESS"]
        )
    assert refused == {}
    wait_for(lambda: len(read_maildir(mailbox(server, "carol"))) == 1, what="the notice")
    assert dsn_status(read_maildir(mailbox(server, "carol"))[0]) == [
        ("rfc822; sales@example.test", "expanded", "2.0.0")
    ]


# -- VRFY, EXPN, HELP STATUS -----------------------------------------------------------------------
def test_vrfy_and_expn_answer_from_the_directory(server: ThreadedServer) -> None:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        assert client.verify("alice@example.test") == (
            250,
            b"2.1.5 Alice Liddell <alice@example.test>",
        )
        assert client.verify("dave@example.test")[0] == 251
        assert client.verify("frank@example.test") == (
            551,
            b"5.1.6 User not local; please try <frank@new.test>",
        )
        assert client.verify("nobody@example.test")[0] == 550
        code, text = client.verify("Li")  # too short to match full names: no candidates
        assert code == 550
        code, text = client.verify("Builder")  # by full name
        assert (code, text) == (250, b"2.1.5 Bob Builder <bob@example.test>")
        code, text = client.expn("team@example.test")
        assert code == 250
        assert text.split(b"\n") == [
            b"2.1.5 Alice Liddell <alice@example.test>",
            b"2.1.5 Bob Builder <bob@example.test>",
            b"2.1.5 <sales@example.test>",
        ]
        code, text = client.expn("big@example.test")
        lines = text.split(b"\n")
        assert code == 250
        assert len(lines) == EXPN_LIMIT + 1
        assert lines[-1] == b"2.1.5 (and 9900 more members, not shown)"
        assert client.expn("alice@example.test")[0] == 550


def test_vrfy_ambiguous_name_lists_the_candidates(tmp_path: Path) -> None:
    config = directory_config(tmp_path, vrfy="on")
    config = replace(
        config,
        domains={**config.domains, "other.test": DomainConfig(users=("alice",))},
    )
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("client.test")
        code, text = client.verify("alice")
    assert code == 553
    assert text.split(b"\n") == [
        b"5.1.4 Ambiguous; possibilities are:",
        b"5.1.4 Alice Liddell <alice@example.test>",
        b"5.1.4 <alice@other.test>",
    ]


def test_an_mx_listener_hides_vrfy_and_refuses_expn_by_default(tmp_path: Path) -> None:
    with (
        ThreadedServer(directory_config(tmp_path)) as server,
        smtplib.SMTP(*server.address, timeout=10) as client,
    ):
        client.ehlo("client.test")
        assert client.verify("alice@example.test")[0] == 252
        assert client.expn("team@example.test")[0] == 502


def test_help_status_is_for_trusted_clients(tmp_path: Path) -> None:
    config = directory_config(tmp_path)
    with ThreadedServer(config) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        code, text = client.docmd("HELP", "STATUS")
        assert code == 211
        assert b"uptime" in text
        assert b"queue 0 messages" in text
    untrusted = replace(config, trusted_networks=())
    with ThreadedServer(untrusted) as server, smtplib.SMTP(*server.address, timeout=10) as client:
        assert client.docmd("HELP", "STATUS")[0] == 502


# -- the commands ----------------------------------------------------------------------------------
def run_cli(*args: str) -> tuple[int, str]:
    out = StringIO()
    with redirect_stdout(out):
        status = pigeon_main(list(args))
    return status, out.getvalue()


def test_commands_change_a_running_server(tmp_path: Path) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        'hostname = "mx.example.test"\n'
        'data_dir = "data"\n'
        "[[listen]]\n"
        'address = "127.0.0.1:0"\n'
        '[domains."example.test"]\n'
        'users = ["alice", "bob", "carol"]\n'
        '[users."bob@example.test"]\n'
        'name = "Bob Builder"\n'
        "[aliases]\n"
        '"sales@example.test" = ["alice@example.test", "bob@example.test"]\n'
    )
    config = load_config(path)
    cli = ["-c", str(path)]
    with ThreadedServer(config) as server:
        assert rcpt(server, "helpdesk@example.test")[0] == 550
        assert run_cli("alias", "add", "helpdesk@example.test", "bob@example.test", *cli)[0] == 0
        assert rcpt(server, "helpdesk@example.test")[0] == 250
        create = ("list", "create", "club@example.test", "--owner", "carol@example.test")
        assert (
            run_cli(*create, "--posting", "owner", "--member", "alice@example.test", *cli)[0] == 0
        )
        assert rcpt(server, "club@example.test", sender="bob@example.test")[0] == 550
        assert rcpt(server, "club@example.test", sender="carol@example.test")[0] == 250
        moved = ("user", "set", "carol@example.test", "--moved-to", "c@new.test", *cli)
        assert run_cli(*moved)[0] == 0
        assert rcpt(server, "carol@example.test")[0] == 551
        assert run_cli("user", "set", "carol@example.test", "--not-moved", *cli)[0] == 0
        assert rcpt(server, "carol@example.test")[0] == 250
        _, out = run_cli("user", "show", "carol@example.test", "--json", *cli)
        assert '"route": "mailbox"' in out
        _, out = run_cli("alias", "list", *cli)
        assert "sales@example.test (config file) -> alice@example.test, bob@example.test" in out
        assert "helpdesk@example.test -> bob@example.test" in out
        # Entries of the configuration file are changed in the file, and the command says so.
        assert run_cli("alias", "del", "sales@example.test", *cli)[0] == 65
        assert run_cli("user", "set", "bob@example.test", "--quota", "5", *cli)[0] == 65
        assert run_cli("alias", "add", "x@nowhere.test", "a@b.test", *cli)[0] == 65
        assert run_cli("list", "del", "nolist@example.test", *cli)[0] == 66
