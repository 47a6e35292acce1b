"""``pigeon serve`` as a real process: defaults, flags, a configuration file, errors, signals."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

import pigeon
from pigeon.cli import main
from tests.servers import PigeonProcess, read_maildir, wait_for

EX_CONFIG = 78
# With no --workers, pigeon serve runs one worker per core.
_CORES = os.cpu_count() or 1
# ... and says which build runs: the compiled one in scripts/test's compiled run.
_BUILD = (
    "compiled build" if os.environ.get("PIGEON_EXPECT_COMPILED") == "1" else "pure-Python build"
)
WORKERS = ("1 process" if _CORES == 1 else f"{_CORES} worker processes") + f", {_BUILD}"

Start = Callable[..., PigeonProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Starts ``pigeon serve`` (cwd: tmp_path unless given) and kills it after the test."""
    started: list[PigeonProcess] = []

    def start_process(*args: str, cwd: Path | None = None) -> PigeonProcess:
        process = PigeonProcess(list(args), cwd=cwd or tmp_path)
        started.append(process)
        return process

    yield start_process
    for process in started:
        process.kill()
        for stream in (process.process.stdout, process.process.stderr):
            if stream is not None:
                stream.close()


def run_pigeon(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m pigeon ARGS`` to completion: for commands that exit by themselves."""
    return subprocess.run(
        [sys.executable, "-m", "pigeon", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def maildir_count(path: Path) -> int:
    return sum(1 for sub in ("new", "cur") if (path / sub).is_dir() for _ in (path / sub).iterdir())


def wait_for_mail(path: Path, count: int = 1) -> list[bytes]:
    wait_for(lambda: maildir_count(path) >= count, timeout=15, what=f"{count} message(s) in {path}")
    return read_maildir(path)


def read_reply(reader: BinaryIO) -> bytes:
    """One whole (possibly multi-line) reply from a raw socket's line reader."""
    lines = []
    for _ in range(100):
        line = reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        lines.append(line)
        if line[3:4] != b"-":
            break
    return b"".join(lines)


def handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return True  # no /proc: nothing to look at, trust the banner
    for line in status.read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def stop(process: PigeonProcess) -> str:
    """SIGTERM; the process must exit 0. Returns what it wrote on stderr.

    The banner is printed before the SIGTERM handler is installed (cli/serve.py ``_serve``
    prints, then ``Server.run_until_signalled`` installs it), so a SIGTERM sent at once may
    meet the default action and kill the process with -15: wait for the handler first.
    """
    pid = process.process.pid
    wait_for(lambda: handles_sigterm(pid), timeout=10, what="the SIGTERM handler")
    assert process.terminate() == 0
    return process.stderr()


# -- no configuration at all ------------------------------------------------------------------


def test_banner_of_the_default_server(tmp_path: Path, start: Start) -> None:
    process = start("--listen", "127.0.0.1:0")
    assert process.banner == [
        f"pigeon: listening on 127.0.0.1:{process.port}",
        "pigeon: mail for localhost: any local part -> pigeon-data/mail/localhost/<user>/ "
        "(Maildir)",
        f"pigeon: {WORKERS}; spool in pigeon-data/spool",
    ]
    assert (tmp_path / "pigeon-data" / "spool").is_dir()
    assert "Traceback" not in stop(process)


def test_default_server_delivers_anyone_at_localhost(tmp_path: Path, start: Start) -> None:
    process = start("--listen", "127.0.0.1:0")
    with smtplib.SMTP("127.0.0.1", process.port, timeout=10) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        refused = client.sendmail(
            "carol@remote.test", ["anyone@localhost"], b"Subject: hello\r\n\r\nfrom the test\r\n"
        )
        assert refused == {}
    (raw,) = wait_for_mail(tmp_path / "pigeon-data" / "mail" / "localhost" / "anyone")
    assert b"Subject: hello" in raw
    assert b"from the test" in raw
    assert b"Delivered-To: anyone@localhost" in raw
    assert "Traceback" not in stop(process)


# -- flags ------------------------------------------------------------------------------------


def flags(data_dir: Path, *more: str) -> list[str]:
    return [
        "--listen",
        "127.0.0.1:0",
        "--domain",
        "example.test",
        "--hostname",
        "mx.example.test",
        "--data-dir",
        str(data_dir),
        *more,
    ]


def test_flags_name_the_domain_and_its_users(tmp_path: Path, start: Start) -> None:
    data = tmp_path / "data"
    process = start(*flags(data, "--user", "alice", "--user", "bob"))
    assert process.banner[1:] == [
        f"pigeon: mail for example.test: alice, bob, postmaster -> {data}/mail/example.test/"
        "<user>/ (Maildir)",
        f"pigeon: {WORKERS}; spool in {data}/spool",
    ]
    assert not (tmp_path / "pigeon-data").exists()
    assert "Traceback" not in stop(process)


def test_flags_domain_users_and_hostname(tmp_path: Path, start: Start) -> None:
    data = tmp_path / "data"
    process = start(*flags(data, "--user", "alice", "--user", "bob"))
    with smtplib.SMTP(timeout=10) as client:
        code, greeting = client.connect("127.0.0.1", process.port)
        assert code == 220
        assert greeting.startswith(b"mx.example.test ")
        client.ehlo("client.test")
        assert client.mail("carol@remote.test")[0] == 250
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.rcpt("carol@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("postmaster@example.test")[0] == 250
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        assert client.data(b"Subject: flags\r\n\r\nhi\r\n")[0] == 250
    (raw,) = wait_for_mail(data / "mail" / "example.test" / "alice")
    assert b"by mx.example.test (Pigeon)" in raw
    wait_for_mail(data / "mail" / "example.test" / "postmaster")
    assert not (data / "mail" / "example.test" / "carol").exists()
    assert "Traceback" not in stop(process)


def test_catch_all_flag_accepts_anyone(tmp_path: Path, start: Start) -> None:
    data = tmp_path / "data"
    process = start(*flags(data, "--catch-all"))
    assert "example.test: any local part" in process.banner[1]
    with smtplib.SMTP("127.0.0.1", process.port, timeout=10) as client:
        refused = client.sendmail(
            "carol@remote.test", ["zed@example.test"], b"Subject: any\r\n\r\nhi\r\n"
        )
        assert refused == {}
    wait_for_mail(data / "mail" / "example.test" / "zed")
    assert "Traceback" not in stop(process)


def test_compat_rfc821_takes_a_bare_helo(tmp_path: Path, start: Start) -> None:
    process = start("--listen", "127.0.0.1:0", "--compat", "rfc821")
    with (
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        assert read_reply(reader).startswith(b"220 ")
        sock.sendall(b"HELO\r\n")
        assert read_reply(reader).startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
        assert read_reply(reader).startswith(b"221 ")
    assert "Traceback" not in stop(process)


# -- a configuration file ---------------------------------------------------------------------

CONFIG = """\
hostname = "file.example.test"
data_dir = "var"

[[listen]]
address = "127.0.0.1:0"
compat = "rfc821"

[domains."example.test"]
users = ["alice"]

[limits]
min_free_disk = 0
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    path = conf / "pigeon.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_file_settings_apply(tmp_path: Path, start: Start) -> None:
    path = write_config(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process = start("-c", str(path), cwd=cwd)
    var = tmp_path / "conf" / "var"  # relative to the file, not to the working directory
    assert process.banner[1:] == [
        f"pigeon: mail for example.test: alice, postmaster -> {var}/mail/example.test/<user>/ "
        "(Maildir)",
        f"pigeon: {WORKERS}; spool in {var}/spool",
    ]
    assert not any(cwd.iterdir())
    assert "Traceback" not in stop(process)


def test_config_file_settings_reach_the_sessions(tmp_path: Path, start: Start) -> None:
    process = start("-c", str(write_config(tmp_path)))
    with (
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        assert read_reply(reader).startswith(b"220 file.example.test ")
        sock.sendall(b"HELO\r\n")  # the file's compat = "rfc821"
        assert read_reply(reader).startswith(b"250 ")
        sock.sendall(b"MAIL FROM:<carol@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        assert read_reply(reader).startswith(b"250 ")
        assert read_reply(reader).startswith(b"250 ")
        sock.sendall(b"RCPT TO:<bob@example.test>\r\n")
        assert read_reply(reader).startswith(b"550 ")
        sock.sendall(b"DATA\r\n")
        assert read_reply(reader).startswith(b"354 ")
        sock.sendall(b"Subject: file\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        assert read_reply(reader).startswith(b"250 ")
        assert read_reply(reader).startswith(b"221 ")
    wait_for_mail(tmp_path / "conf" / "var" / "mail" / "example.test" / "alice")
    assert "Traceback" not in stop(process)


def test_flags_override_the_file(tmp_path: Path, start: Start) -> None:
    path = write_config(tmp_path)
    data = tmp_path / "flag-data"
    process = start(
        "-c", str(path), "--data-dir", str(data), "--domain", "other.test", "--user", "zed"
    )
    assert process.banner[1:] == [
        f"pigeon: mail for other.test: zed, postmaster -> {data}/mail/other.test/<user>/ (Maildir)",
        f"pigeon: {WORKERS}; spool in {data}/spool",
    ]
    assert not (tmp_path / "conf" / "var").exists()
    assert "Traceback" not in stop(process)


def test_flags_override_the_file_in_sessions(tmp_path: Path, start: Start) -> None:
    path = write_config(tmp_path)
    # --listen replaces the file's address but keeps its compat = "rfc821".
    process = start("-c", str(path), "--listen", "127.0.0.1:0", "--hostname", "flag.example.test")
    with (
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
        sock.makefile("rb") as reader,
    ):
        assert read_reply(reader).startswith(b"220 flag.example.test ")
        sock.sendall(b"HELO\r\n")
        assert read_reply(reader).startswith(b"250 ")
    assert "Traceback" not in stop(process)


# -- errors: exit 78 (EX_CONFIG) with a message naming the problem, no traceback --------------


def bad_configs(tmp_path: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, what stderr must say)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    files = {
        "invalid.toml": 'hostname = "unterminated\n',
        "unknown.toml": "[limits]\nbogus = 1\n",
        "badtype.toml": '[limits]\nmessage_size = "big"\n',
    }
    for name, text in files.items():
        (conf / name).write_text(text, encoding="utf-8")
    missing = str(conf / "missing.toml")
    return {
        "missing file": (["-c", missing], [missing, "no such configuration file"]),
        "invalid TOML": (["-c", str(conf / "invalid.toml")], ["invalid.toml", "not valid TOML"]),
        "unknown key": (["-c", str(conf / "unknown.toml")], ["limits.bogus"]),
        "bad type": (["-c", str(conf / "badtype.toml")], ["limits.message_size"]),
        "user without domain": (["--user", "alice"], ["--user", "--domain"]),
        "catch-all without domain": (["--catch-all"], ["--catch-all", "--domain"]),
        "bad trust": (["--trust", "192.0.2.0/33"], ["192.0.2.0/33", "not a network"]),
        "bad listen port": (["--listen", "127.0.0.1:99999"], ["127.0.0.1:99999", "port"]),
        "bad listen bracket": (["--listen", "[::1:25"], ["[::1:25"]),
    }


BAD = [
    "missing file",
    "invalid TOML",
    "unknown key",
    "bad type",
    "user without domain",
    "catch-all without domain",
    "bad trust",
    "bad listen port",
    "bad listen bracket",
]


@pytest.mark.parametrize("case", BAD)
def test_configuration_errors_exit_78_naming_the_problem(tmp_path: Path, case: str) -> None:
    args, expected = bad_configs(tmp_path)[case]
    result = run_pigeon(["serve", "--data-dir", str(tmp_path / "data"), *args], cwd=tmp_path)
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("pigeon serve: ")
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    ("flag", "value"), [("--trust", "192.0.2.0/33"), ("--listen", "127.0.0.1:99999")]
)
def test_bad_flag_value_names_the_flag(tmp_path: Path, flag: str, value: str) -> None:
    result = run_pigeon(["serve", flag, value], cwd=tmp_path)
    assert result.returncode == EX_CONFIG
    assert flag in result.stderr


@pytest.mark.parametrize(
    ("args", "config_text"),
    [
        (["--listen", "127.0.0.1:\u00b2"], None),
        (["--listen", "127.0.0.1:0", "--resolver", "127.0.0.1:x"], None),
        (["--listen", "127.0.0.1:0", "--resolver", "127.0.0.1:53", "--resolver", "[::1]:54"], None),
        ([], 'resolver = ["127.0.0.1:x"]\n[[listen]]\naddress = "127.0.0.1:0"\n'),
        ([], 'hostname = ""\n[[listen]]\naddress = "127.0.0.1:0"\n'),
    ],
    ids=[
        "listen-unicode-digit",
        "resolver-port",
        "resolver-ports",
        "file-resolver",
        "file-hostname",
    ],
)
def test_other_bad_settings_exit_78_without_traceback(
    tmp_path: Path, args: list[str], config_text: str | None
) -> None:
    if config_text is not None:
        path = tmp_path / "pigeon.toml"
        path.write_text(config_text, encoding="utf-8")
        args = [*args, "-c", str(path)]
    result = run_pigeon(["serve", "--data-dir", str(tmp_path / "data"), *args], cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == EX_CONFIG


# -- signals and the command itself -----------------------------------------------------------


def test_sigterm_exits_0(tmp_path: Path, start: Start) -> None:
    process = start("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    assert process.process.poll() is None
    stderr = stop(process)
    assert "event=shutdown" in stderr
    assert "Traceback" not in stderr


def test_version(tmp_path: Path) -> None:
    result = run_pigeon(["--version"], cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"pigeon {pigeon.__version__} ({_BUILD})"


def test_no_command_prints_help_and_exits_2(tmp_path: Path) -> None:
    result = run_pigeon([], cwd=tmp_path)
    assert result.returncode == 2
    assert "serve" in result.stderr


@pytest.mark.parametrize(
    ("group", "shown"),
    [
        (["queue"], "hold"),
        (["tls"], "selfsigned"),
        (["user"], "passwd"),
        (["alias"], "add"),
        (["list"], "create"),
        (["web"], "token"),
        (["web", "token"], "create"),
    ],
)
def test_a_group_without_its_subcommand_prints_help_and_exits_2(
    group: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # As `pigeon` alone and argparse's own errors: one status for "the command line is short".
    assert main(group) == 2
    assert shown in capsys.readouterr().err


def test_serve_help_mentions_the_defaults(tmp_path: Path) -> None:
    result = run_pigeon(["serve", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "127.0.0.1:2525" in result.stdout
    for flag in ("--config", "--listen", "--domain", "--user", "--catch-all", "--trust"):
        assert flag in result.stdout
