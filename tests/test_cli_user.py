"""``pigeon user add/passwd/del/list``: the users in <data_dir>/users.db."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pigeon.auth import UserStore
from pigeon.cli import main


def run(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
    stdin: str = "",
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = main(["user", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def check(data: Path, address: str, password: str) -> bool:
    store = UserStore(data / "users.db")
    try:
        return store.check_password(address, password) is not None
    finally:
        store.close()


def test_add_list_passwd_del(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    where = ("--data-dir", str(data))
    status, out, _ = run(
        capsys, monkeypatch, "add", "Alice@Example.TEST", "--password-stdin", *where, stdin="pw 1\n"
    )
    assert status == 0
    assert out == "pigeon user: added alice@example.test\n"
    assert check(data, "alice@example.test", "pw 1")  # the line without its newline

    status, out, _ = run(capsys, monkeypatch, "list", *where)
    assert (status, out) == (0, "alice@example.test\n")
    status, out, _ = run(capsys, monkeypatch, "list", "--json", *where)
    (entry,) = json.loads(out)
    assert entry["address"] == "alice@example.test"
    assert set(entry) == {"address", "created", "changed"}  # never a secret

    status, _, _ = run(
        capsys, monkeypatch, "passwd", "alice@example.test", "--password-stdin", *where, stdin="n"
    )
    assert status == 0
    assert check(data, "alice@example.test", "n")
    assert not check(data, "alice@example.test", "pw 1")

    status, out, _ = run(capsys, monkeypatch, "del", "alice@example.test", *where)
    assert status == 0
    assert out.startswith("pigeon user: deleted alice@example.test")
    assert run(capsys, monkeypatch, "list", *where)[1] == ""


def test_password_is_asked_twice_without_stdin(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["typed", "typed", "one", "other"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert run(capsys, monkeypatch, "add", "bob@example.test", "--data-dir", str(data))[0] == 0
    assert check(data, "bob@example.test", "typed")
    status, _, err = run(capsys, monkeypatch, "passwd", "bob@example.test", "--data-dir", str(data))
    assert status == 64
    assert "the passwords differ" in err
    assert check(data, "bob@example.test", "typed")


def test_mistakes(
    data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    where = ("--data-dir", str(data))
    run(capsys, monkeypatch, "add", "a@example.test", "--password-stdin", *where, stdin="x\n")
    status, _, err = run(
        capsys, monkeypatch, "add", "a@example.test", "--password-stdin", *where, stdin="y\n"
    )
    assert (status, err) == (73, "pigeon user: a@example.test exists already\n")
    status, _, err = run(capsys, monkeypatch, "del", "b@example.test", *where)
    assert (status, err) == (64, "pigeon user: no such user: b@example.test\n")
    status, _, err = run(
        capsys, monkeypatch, "passwd", "b@example.test", "--password-stdin", *where, stdin="z\n"
    )
    assert status == 64
    status, _, err = run(
        capsys, monkeypatch, "add", "no/slash@example.test", "--password-stdin", *where
    )
    assert status == 64
    assert "not a user address" in err
    status, _, err = run(
        capsys, monkeypatch, "add", "c@example.test", "--password-stdin", *where, stdin="\n"
    )
    assert (status, err) == (64, "pigeon user: the password is empty\n")


def test_the_data_dir_comes_from_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "pigeon.toml"
    config.write_text('data_dir = "elsewhere"\n[domains."example.test"]\n')
    status, _, err = run(
        capsys, monkeypatch, "add", "x@other.test", "--password-stdin", "-c", str(config), stdin="p"
    )
    assert status == 0
    assert (tmp_path / "elsewhere" / "users.db").exists()
    # Not a domain served: the user may authenticate and send, but has no mailbox here.
    assert "other.test is not a domain this server serves" in err
    status, _, err = run(capsys, monkeypatch, "list", "-c", str(tmp_path / "missing.toml"))
    assert status == 78
