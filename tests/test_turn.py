"""TURN, ETRN and ATRN end to end: a provider Pigeon holding mail for a customer's domain,
and ``pigeon fetch`` taking it into a second Pigeon's mailboxes over the same connection."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pigeon.auth import UserStore
from pigeon.config import ConfigError, ListenerConfig, OdmrConfig, load_config
from pigeon.queue.admin import QueueAdmin
from pigeon.queue.index import RecipientState
from tests.servers import ThreadedServer, make_config, read_maildir, wait_for

OWNER = "cust@example.test"
PASSWORD = "hold my mail"
MESSAGE = b"From: dave@elsewhere.test\r\nSubject: held\r\n\r\nFetched on demand.\r\n"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[ThreadedServer]:
    listener = ListenerConfig(address="127.0.0.1:0", auth="on", atrn=True, etrn=True)
    config = make_config(
        tmp_path / "provider",
        listen=(listener,),
        odmr={"customer.test": OdmrConfig(owners=(OWNER,))},
    )
    config.data_dir.mkdir(parents=True)
    store = UserStore(config.users_db)
    store.add(OWNER, PASSWORD)
    store.add("alice@example.test", PASSWORD)
    store.close()
    with ThreadedServer(config) as server:
        yield server


def send_to_customer(server: ThreadedServer, count: int = 1) -> None:
    """Mail for the held domain, from a client nobody trusts (as a backup MX takes it)."""
    with smtplib.SMTP(*server.address, timeout=10) as client:
        for _ in range(count):
            client.sendmail("dave@elsewhere.test", ["carol@customer.test"], MESSAGE)


def held(server: ThreadedServer) -> list[str]:
    """The last replies of the held recipients in the provider's queue."""
    return [
        r.last_reply
        for m in QueueAdmin(server.config.data_dir).messages()
        for r in m.recipients
        if r.state is RecipientState.HELD
    ]


def command(server: ThreadedServer, *lines: str, login: str | None = None) -> list[int]:
    with smtplib.SMTP(*server.address, timeout=10) as client:
        client.ehlo("customer.test")
        if login is not None:
            client.login(login, PASSWORD)
        return [client.docmd(line)[0] for line in lines]


def fetch(tmp_path: Path, server: ThreadedServer, *extra: str) -> subprocess.CompletedProcess[str]:
    local = tmp_path / "local.toml"
    local.write_text(
        f'hostname = "mx.customer.test"\ndata_dir = "{tmp_path / "customer"}"\n'
        '[domains."customer.test"]\nusers = ["carol"]\n[limits]\nmin_free_disk = 0\n'
        "[web]\nenabled = false\n"
    )
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    return subprocess.run(
        [
            *(sys.executable, "-m", "pigeon", "fetch", *extra),
            *("--server", f"127.0.0.1:{server.port}", "--user", OWNER),
            *("--password-file", str(secret), "-c", str(local)),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        check=False,
    )


def test_held_mail_is_fetched_with_atrn(tmp_path: Path, provider: ThreadedServer) -> None:
    send_to_customer(provider, count=2)
    wait_for(lambda: len(held(provider)) == 2, what="the mail to be held")
    assert "waiting for an owner of customer.test to ATRN" in held(provider)[0]

    done = fetch(tmp_path, provider, "--atrn", "customer.test")
    assert done.returncode == 0, done.stderr
    assert "2 messages received" in done.stdout
    inbox = read_maildir(tmp_path / "customer" / "mail" / "customer.test" / "carol")
    assert len(inbox) == 2
    assert b"Fetched on demand." in inbox[0]
    # The provider recorded the deliveries through the worker that owns the messages.
    wait_for(lambda: QueueAdmin(provider.config.data_dir).messages() == [], what="queue empty")

    again = fetch(tmp_path, provider, "--atrn")
    assert again.returncode == 0, again.stderr
    assert "no mail waiting" in again.stdout


def test_turn_by_an_owner_behaves_like_atrn(tmp_path: Path, provider: ThreadedServer) -> None:
    send_to_customer(provider)
    wait_for(lambda: len(held(provider)) == 1, what="the mail to be held")
    done = fetch(tmp_path, provider, "--turn")
    assert done.returncode == 0, done.stderr
    assert len(read_maildir(tmp_path / "customer" / "mail" / "customer.test" / "carol")) == 1


def test_turn_without_authentication_never_reverses(provider: ThreadedServer) -> None:
    send_to_customer(provider)
    wait_for(lambda: len(held(provider)) == 1, what="the mail to be held")
    # TURN, ATRN before AUTH, and the session goes on as a server (NOOP answered). (swaks
    # has no option that sends TURN, so smtplib speaks here.)
    assert command(provider, "TURN", "ATRN customer.test", "NOOP") == [502, 530, 250]
    # A user who owns no held domain: TURN 502, ATRN refused (450).
    assert command(provider, "TURN", "ATRN customer.test", login="alice@example.test") == [
        502,
        450,
    ]
    assert len(held(provider)) == 1  # nothing was handed over


def test_etrn(tmp_path: Path) -> None:
    listener = ListenerConfig(address="127.0.0.1:0", etrn=True)
    config = make_config(
        tmp_path / "data",
        listen=(listener,),
        trusted_networks=("127.0.0.0/8",),
        odmr={"customer.test": OdmrConfig(owners=(OWNER,))},
    )
    with ThreadedServer(config) as server:
        # No resolver: mail for remote.test is deferred, waiting in the queue.
        with smtplib.SMTP(*server.address, timeout=10) as client:
            client.sendmail("alice@example.test", ["dave@remote.test"], MESSAGE)
        wait_for(
            lambda: any(
                r.state is RecipientState.DEFERRED
                for m in QueueAdmin(config.data_dir).messages()
                for r in m.recipients
            ),
            what="the deferral",
        )
        with smtplib.SMTP(*server.address, timeout=10) as client:
            client.ehlo("client.test")
            assert "etrn" in client.esmtp_features
            code, text = client.docmd("ETRN remote.test")
            assert (code, text) == (
                250,
                b"2.0.0 OK, queuing for node remote.test started (1 messages)",
            )
            assert client.docmd("ETRN @test")[0] == 250  # remote.test is a subdomain
            assert client.docmd("ETRN other.test")[0] == 251
            assert client.docmd("ETRN example.test")[0] == 459  # delivered here
            assert client.docmd("ETRN customer.test")[0] == 459  # held for ATRN
            assert client.docmd("ETRN #queue")[0] == 459
            assert client.docmd("ETRN")[0] == 501
            assert client.docmd("ETRN not_a domain")[0] == 501
            assert client.docmd("MAIL FROM:<alice@example.test>")[0] == 250
            assert client.docmd("ETRN remote.test")[0] == 503  # not in a transaction


def test_etrn_is_off_unless_configured(tmp_path: Path) -> None:
    with (
        ThreadedServer(make_config(tmp_path / "data")) as server,
        smtplib.SMTP(*server.address, timeout=10) as client,
    ):
        client.ehlo("client.test")
        assert "etrn" not in client.esmtp_features
        assert "atrn" not in client.esmtp_features
        assert client.docmd("ETRN remote.test")[0] == 502
        assert client.docmd("ATRN")[0] == 502


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[odmr."customer.test"]\n', ["odmr.customer.test.owners", "at least one"]),
        ('[odmr."example.test"]\nowners = ["a@example.test"]\n', ["served here"]),
        ('[odmr."not a domain"]\nowners = ["a@example.test"]\n', ["not a domain"]),
        ('[odmr."c.test"]\nowners = ["a@example.test"]\nhold = 1\n', ["unknown setting"]),
        ("[[listen]]\natrn = true\n", ["listen[0].atrn", "AUTH"]),
        ('[[listen]]\netrn = "yes"\n', ["listen[0].etrn", "true or false"]),
        ("[[listen]]\nsend_commands = 1\n", ["listen[0].send_commands"]),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text('[domains."example.test"]\nusers = ["a"]\n' + text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    for word in words:
        assert word in str(raised.value)


def test_odmr_setting_loads(tmp_path: Path) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        '[[listen]]\naddress = "127.0.0.1:366"\nauth = "on"\natrn = true\netrn = true\n'
        '[odmr."Customer.Test"]\nowners = ["Cust@Example.test"]\n'
    )
    config = load_config(path)
    assert config.odmr == {"customer.test": OdmrConfig(owners=("cust@example.test",))}
    assert (config.listen[0].atrn, config.listen[0].etrn, config.listen[0].send_commands) == (
        True,
        True,
        False,
    )
