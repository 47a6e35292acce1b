"""Pigeon's benchmark: Pigeon against Postfix, aiosmtpd and Haraka, under the same
smtp-source loads.

Run it through ``bench/run`` (which installs what this needs)::

    bench/run [throughput|idle|maildir|instructions|sync|all] [--quick]

Modes:

- ``throughput``: 20 parallel smtp-source sessions send 1 KiB messages over reused
  connections, 1 KiB messages with a new connection each, and 100 KiB messages over reused
  connections, to each server in turn. Reports messages per second (median and range of the
  runs), the server's CPU time per message (all its processes, from /proc), Pigeon's ratio to
  each reference and whether it meets the issue's goal.
- ``idle``: opens 1,000 then 10,000 idle connections (each reads its 220 greeting), reports
  the server's memory per connection and how long a new client waits for its greeting.
- ``maildir``: sustained accept-and-deliver: the time from the first message sent until all N
  are files in the Maildir, Pigeon against Postfix delivering to Maildir.
- ``instructions``: Pigeon (one worker, holding every message) and aiosmtpd under valgrind's
  callgrind: the user-space instructions each 1 KiB message costs the server, reused
  connections and new ones. Not a speed, but a count that stays the same from run to run
  (within about 1 %), where msg/s on a shared virtual machine moves by 20 % or more: the
  figure to compare two versions of the code by. Not in ``all``.
- ``sync``: no server. What one small ``fdatasync`` costs on the file system of the bench's
  directory, appending to a file against writing over zeros written and synced before: the
  reason Pigeon's spool prepares its segments (see ``pigeon.queue.spool``). Not in ``all``.

Every server runs on a free port of 127.0.0.1 in its own temporary directory and is stopped
afterwards; every load is bounded in messages and every wait in time. Results are printed and
written to ``bench/results.md`` (one section per mode, replaced when that mode runs again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import grp
import math
import os
import platform
import pwd
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Installed copies of the tree as it was when bench/run began (scripts/build-venv), not the
# editable .venv: a file edited during a run must not change the server being measured, nor
# break the command that empties its queue between runs.
PIGEON = BENCH / ".venv-pure" / "bin" / "pigeon"
# The compiled build (PIGEON_COMPILE=1 pip install .), which bench/run makes from this tree.
PIGEON_COMPILED = BENCH / ".venv-compiled" / "bin" / "pigeon"
REF_PYTHON = BENCH / ".venv-ref" / "bin" / "python"
REF_SCRIPT = BENCH / "ref_aiosmtpd.py"
# Haraka from the npm registry, which bench/run installs here when Node.js can run it.
HARAKA = BENCH / ".haraka" / "node_modules" / ".bin" / "haraka"
HARAKA_VERSION = "3.3.4"  # the version of the table
RESULTS = BENCH / "results.md"
SMTP_SOURCE = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")
POSTFIX = shutil.which("postfix") or shutil.which("postfix", path="/usr/sbin")
POSTCONF = shutil.which("postconf") or shutil.which("postconf", path="/usr/sbin")
POSTSUPER = shutil.which("postsuper") or shutil.which("postsuper", path="/usr/sbin")
VALGRIND = shutil.which("valgrind")
CALLGRIND_CONTROL = shutil.which("callgrind_control")

HOST = "127.0.0.1"
DOMAIN = "example.test"
USER = "alice"
RECIPIENT = f"{USER}@{DOMAIN}"
SENDER = "sender@remote.test"
SESSIONS = 20  # parallel smtp-source sessions, as in the measurements

START_TIMEOUT = 30.0  # seconds a server may take to greet its first client
CALLGRIND_START_TIMEOUT = 300.0  # ... when it runs under callgrind, some fifty times slower
STOP_TIMEOUT = 40.0  # seconds a server may take to stop (Pigeon's shutdown grace is 30)
LOAD_TIMEOUT = 300.0  # seconds one smtp-source run may take
SETTLE_TIMEOUT = 180.0  # seconds for what was accepted to reach the mailbox (or queue)
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


class Skip(Exception):
    """A server cannot run here (the message says why) and is left out of the results."""


# -- processes ----------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system time of these processes and of their children that have ended.

    Summed over a whole tree this counts every process once: a live one by its own time, an
    ended one inside its parent's cutime/cstime (Postfix's master reaps its smtpd and cleanup
    processes when they reach max_use or max_idle)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def memory_kib(pids: Sequence[int]) -> tuple[int, int]:
    """(VmRSS, Pss) summed over the processes, in KiB. Pss shares each shared page between
    the processes that map it, so it does not count the libraries of a process tree N times."""
    rss = pss = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return rss, pss


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def greeting_time(port: int, timeout: float = 5.0) -> float:
    """Seconds from connect() until the whole 220 greeting has arrived; then QUIT."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        buffer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise BenchError(f"port {port} closed the connection before its greeting")
            buffer += chunk
            lines = buffer.split(b"\r\n")
            done = [line for line in lines[:-1] if line[:4] == b"220 "]
            if done:
                break
            if lines[0][:3] != b"220" and len(lines) > 1:
                raise BenchError(f"port {port} greeted with {lines[0][:80]!r}")
        elapsed = time.perf_counter() - start
        with contextlib.suppress(OSError):
            sock.sendall(b"QUIT\r\n")
            sock.recv(4096)
    return elapsed


def count_files(directory: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(directory))
    except FileNotFoundError:
        return 0


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text[-lines:]) or f"({path} is empty)"


# -- servers under test ------------------------------------------------------------------------
class Server:
    """One server on a free loopback port, in its own directory; ``start``/``stop``."""

    name: str = "server"  # short name for tables
    warm_up_scale: int = 1  # how many times the usual uncounted load it needs to warm up
    running: ClassVar[list[Server]] = []  # every started server, for the last-resort cleanup

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "server.log"
        self.start_timeout = START_TIMEOUT

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def root_pid(self) -> int | None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        root = self.root_pid()
        return [] if root is None else process_tree(root)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def store_dir(self) -> Path | None:
        """Where each stored message is one file (Maildir new/, a queue); None: discards."""
        return None

    def stored(self) -> int | None:
        """Messages stored so far (in the mailbox or the queue); None if it discards them."""
        directory = self.store_dir()
        return None if directory is None else count_files(directory)

    def last_stored(self) -> float | None:
        """The time (time.time()) the newest stored message got there: its inode's change
        time, which the rename into new/ sets. Exact, unlike the moment a poll noticed it."""
        directory = self.store_dir()
        if directory is None:
            return None
        newest = None
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                ctime = entry.stat(follow_symlinks=False).st_ctime
                newest = ctime if newest is None else max(newest, ctime)
        return newest

    def clear(self) -> None:
        """Empties the store between runs (as a mail reader would), so that counting and
        scanning it stays cheap and each run starts alike."""
        directory = self.store_dir()
        if directory is not None:
            for entry in os.scandir(directory):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _wait_ready(self, alive: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not alive():
                raise BenchError(f"{self.name} exited while starting; log:\n{tail(self.log)}")
            try:
                greeting_time(self.port, timeout=2.0)
            except (OSError, BenchError) as error:
                last = str(error)
                time.sleep(0.1)
                continue
            return
        raise BenchError(
            f"{self.name} did not greet on {HOST}:{self.port} within {self.start_timeout:.0f} s "
            f"({last}); log:\n{tail(self.log)}"
        )


class ProcessServer(Server):
    """A server that is one process we start (and its children), stopped with SIGTERM."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.wrapper: list[str] = []  # a program that runs the server's command (valgrind)

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None: this process's own."""
        return None

    def start(self) -> None:
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            [*self.wrapper, *self.command()],
            cwd=self.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one
        )
        Server.running.append(self)
        process = self.process
        self._wait_ready(lambda: process.poll() is None)

    def root_pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self) -> None:
        process = self.process
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    print(f"bench: {self.name} ignored SIGTERM; killing it", file=sys.stderr)
            # Its process group is ours (start_new_session): nothing in it may outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self in Server.running:
            Server.running.remove(self)


def administer(command: list[str]) -> None:
    """Runs a server's own administration command (emptying its queue, say), or fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        name = " ".join([Path(command[0]).name, *command[1:]])
        raise BenchError(f"{name} failed: {result.stderr[-500:]}")


def pigeon_has_workers() -> bool:
    help_text = subprocess.run(
        [str(PIGEON), "serve", "--help"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    return "--workers" in help_text


class PigeonServer(ProcessServer):
    """``held``: the recipient's domain is held for on-demand relay (``[odmr]``), so every
    message waits in the queue after its 250, as the reference Postfix holds every message:
    the same work on both sides. Otherwise it is a domain of Pigeon's own, and every message
    is delivered into the Maildir while the load runs. ``compiled``: the build of
    ``PIGEON_COMPILE=1 pip install .`` (mypyc), not the pure-Python one."""

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int | None,
        connections: int | None = None,
        held: bool = False,
        compiled: bool = False,
    ):
        super().__init__(workdir)
        self.workers = workers
        self.connections = connections
        self.held = held
        self.program = PIGEON_COMPILED if compiled else PIGEON
        self.name = "pigeon" if workers is None else f"pigeon-{workers}w"
        if compiled:
            self.name += "-compiled"
        if held:
            self.name += "-held"
        self.data = workdir / "data"
        self.maildir_new = self.data / "mail" / DOMAIN / USER / "new"
        self.config = workdir / "pigeon.toml"

    def command(self) -> list[str]:
        # Held mail (an [odmr] domain) and the connection limit have no flags: one
        # configuration file says everything.
        if self.held:
            mail = f'[odmr."{DOMAIN}"]\nowners = ["{USER}@{DOMAIN}"]\n'
        else:
            mail = f'[domains."{DOMAIN}"]\nusers = ["{USER}"]\n'
        limits = "" if self.connections is None else f"connections = {self.connections}\n"
        self.config.write_text(
            'hostname = "pigeon.bench.test"\n'
            f'data_dir = "{self.data}"\n'
            "[[listen]]\n"
            f'address = "{HOST}:{self.port}"\n'
            f"{mail}"
            "[limits]\n"
            f"{limits}"
            # Every load comes from 127.0.0.1: no per-address limit (Postfix exempts its
            # mynetworks, loopback included, from its per-client limits likewise).
            "connections_per_ip = 0\n"
        )
        if not self.program.exists():
            raise Skip(f"{self.program} is missing (bench/run builds it)")
        command = [str(self.program), "serve", "-c", str(self.config)]
        if self.workers is not None:
            command.append(f"--workers={self.workers}")
        return command

    def store_dir(self) -> Path:
        return self.maildir_new

    def stored(self) -> int | None:
        if not self.held:
            return super().stored()
        # Held mail is in the spool and the queue index; the index counts it.
        index = self.data / "queue.db"
        if not index.exists():
            return 0
        with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT COUNT(*) FROM messages WHERE done = 0").fetchone()[0])

    def last_stored(self) -> float | None:
        return None if self.held else super().last_stored()

    def clear(self) -> None:
        if not self.held:
            super().clear()
            return
        if not self.stored():
            return
        # As the reference's are (postsuper -d ALL hold): the server stays up, and warm.
        administer([str(self.program), "queue", "delete", "--all", "-c", str(self.config)])
        if not wait_until(lambda: not self.stored(), 60):
            raise BenchError(f"{self.name} still holds {self.stored()} messages after a delete")


class AiosmtpdServer(ProcessServer):
    def __init__(self, workdir: Path, *, mode: str) -> None:
        super().__init__(workdir)
        self.mode = mode
        self.name = f"aiosmtpd-{mode}"
        self.maildir = workdir / "Maildir"

    def command(self) -> list[str]:
        if not REF_PYTHON.exists():
            raise Skip(f"{REF_PYTHON} is missing (bench/run creates it)")
        command = [str(REF_PYTHON), str(REF_SCRIPT), f"--port={self.port}", f"--mode={self.mode}"]
        command += [f"--recipient={RECIPIENT}"]
        if self.mode == "maildir":
            command.append(f"--maildir={self.maildir}")
        return command

    def store_dir(self) -> Path | None:
        return self.maildir / "new" if self.mode == "maildir" else None


# Haraka's reverse lookup of each client, answered without DNS: Pigeon and aiosmtpd make none in
# these runs (no resolver is configured), and a test machine's lookups must not leave it.
_HARAKA_NO_RDNS = """\
exports.hook_lookup_rdns = (next) => next(OK, 'localhost')
"""


class HarakaServer(ProcessServer):
    """Haraka, discarding every message, as in the issue's table: an instance made by
    ``haraka -i`` with two plugins, ``rcpt_to.in_host_list`` (the one domain is local) and
    ``queue/discard``; one worker per core (``nodes=cpus``, as Pigeon's default); logging at
    NOTICE, where it writes a line or two per message as Pigeon does (at its default INFO it
    writes about ten, which costs it more CPU)."""

    name = "haraka-discard"
    warm_up_scale = 10  # V8 compiles a function only after many calls, in each worker

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.instance = workdir / "haraka"

    def command(self) -> list[str]:
        if not HARAKA.exists():
            raise Skip(f"{HARAKA} is missing (bench/run installs it when Node.js 20 is here)")
        if not self.instance.exists():
            subprocess.run(
                [str(HARAKA), "-i", str(self.instance)],
                capture_output=True,
                timeout=120,
                check=True,
            )
        config = self.instance / "config"
        (config / "smtp.ini").write_text(f"listen={HOST}:{self.port}\nnodes=cpus\n")
        (config / "plugins").write_text("bench_no_rdns\nrcpt_to.in_host_list\nqueue/discard\n")
        (config / "host_list").write_text(f"{DOMAIN}\n")
        (config / "log.ini").write_text("[main]\nlevel=notice\nformat=default\n")
        (config / "me").write_text("haraka.bench.test\n")
        (self.instance / "plugins" / "bench_no_rdns.js").write_text(_HARAKA_NO_RDNS)
        return [str(HARAKA), "-c", str(self.instance)]

    def environment(self) -> dict[str, str]:
        # queue/discard discards only when told to, so that a plugin list copied into
        # production without a real queue plugin cannot lose mail.
        return {**os.environ, "YES_REALLY_DO_DISCARD": "1"}


# Every daemon Postfix needs, none chrooted (the chroot would need copies of /etc files).
_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServer(Server):
    """A private Postfix instance: its own config_directory, queue_directory and
    data_directory under the work directory, started with ``postfix -c DIR start``.

    Modes:

    - ``hold``: accept into the queue and deliver nothing. ``smtpd_data_restrictions =
      check_client_access static:HOLD`` makes every message go, from cleanup, straight into
      the hold queue: cleanup has written and fsynced the queue file before smtpd answers 250
      (as always), and the queue manager never sees the message, so nothing is delivered or
      deferred and no delivery work is counted. This is "accepting into its queue, transport
      on hold". (``defer_transports`` would also keep mail undelivered, but only after qmgr
      and the defer service have handled every message: work the issue's figure excludes.)
    - ``maildir``: deliver with virtual(8) into ``vmail/example.test/alice/`` (a Maildir,
      because the map's value ends in "/"), as the unprivileged user nobody.
    - ``idle``: like ``hold`` with room for ``process_limit`` smtpd processes (one per
      connection: that is Postfix's design).
    """

    def __init__(self, workdir: Path, *, mode: str, process_limit: int = 100) -> None:
        super().__init__(workdir)
        self.mode = mode
        self.name = "postfix" if mode == "hold" else f"postfix-{mode}"
        self.process_limit = process_limit
        self.config_dir = workdir / "conf"
        self.queue_dir = workdir / "queue"
        self.data_dir = workdir / "data"
        self.vmail = workdir / "vmail"
        self.log = workdir / "maillog"
        self._started = False

    def _configure(self) -> None:
        if os.geteuid() != 0:
            raise Skip("a private Postfix instance needs root (run bench/run as root or sudo)")
        if POSTFIX is None:
            raise Skip("postfix is not installed (bench/run installs it)")
        postfix = pwd.getpwnam("postfix")
        for directory in (self.config_dir, self.queue_dir, self.data_dir):
            directory.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.data_dir, postfix.pw_uid, postfix.pw_gid)
        lines = [
            "compatibility_level = 3.6",
            f"config_directory = {self.config_dir}",
            f"queue_directory = {self.queue_dir}",
            f"data_directory = {self.data_dir}",
            "meta_directory = /etc/postfix",  # postfix-files, dynamicmaps.cf of the package
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = postfix.bench.test",
            "mydomain = bench.test",
            "myorigin = $myhostname",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_recipient_restrictions = permit_mynetworks, reject",
            "smtpd_peername_lookup = no",  # loopback only: no DNS
            "alias_maps =",
            "alias_database =",
            "biff = no",
            # No syslog here: postlogd (the "postlog" service) writes this file.
            f"maillog_file = {self.log}",
            f"maillog_file_prefixes = {self.workdir}",
            f"default_process_limit = {self.process_limit}",
        ]
        if self.mode == "maildir":
            nobody = pwd.getpwnam("nobody")
            nogroup = grp.getgrgid(nobody.pw_gid)
            self.vmail.mkdir(mode=0o755, exist_ok=True)
            os.chown(self.vmail, nobody.pw_uid, nogroup.gr_gid)
            vmailbox = self.config_dir / "vmailbox"
            vmailbox.write_text(f"{RECIPIENT} {DOMAIN}/{USER}/\n")
            lines += [
                "mydestination = localhost",
                f"virtual_mailbox_domains = {DOMAIN}",
                f"virtual_mailbox_base = {self.vmail}",
                f"virtual_mailbox_maps = texthash:{vmailbox}",
                f"virtual_uid_maps = static:{nobody.pw_uid}",
                f"virtual_gid_maps = static:{nogroup.gr_gid}",
            ]
        else:
            recipients = self.config_dir / "local_recipients"
            recipients.write_text(f"{USER} x\n")
            lines += [
                f"mydestination = {DOMAIN}",
                # Unknown users are refused at RCPT, as Pigeon does: a lookup per recipient.
                f"local_recipient_maps = texthash:{recipients}",
                # See the class docstring: every accepted message goes to the hold queue.
                "smtpd_data_restrictions = check_client_access static:HOLD",
            ]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n")
        smtpd = f"{HOST}:{self.port} inet n - n - {self.process_limit} smtpd\n"
        (self.config_dir / "master.cf").write_text(smtpd + _MASTER_CF)

    def _postfix(self, action: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        assert POSTFIX is not None
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), action],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        self._configure()
        Server.running.append(self)
        self._started = True
        result = self._postfix("start")
        if result.returncode != 0:
            raise BenchError(
                f"postfix -c {self.config_dir} start failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}\nmaillog:\n{tail(self.log)}"
            )
        if not wait_until(lambda: self.root_pid() is not None, 15):
            raise BenchError(f"postfix wrote no master.pid; maillog:\n{tail(self.log)}")
        self._wait_ready(lambda: self.root_pid() is not None)

    def root_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def stop(self) -> None:
        if not self._started:
            return
        leftovers = self.pids()
        result = self._postfix("stop")
        if result.returncode != 0:
            print(f"bench: postfix stop: {result.stdout}{result.stderr}", file=sys.stderr)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in leftovers), 15)
        for pid in leftovers:  # the processes of this instance only, by their ids
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._started = False
        if self in Server.running:
            Server.running.remove(self)

    def store_dir(self) -> Path:
        if self.mode == "maildir":
            return self.vmail / DOMAIN / USER / "new"
        return self.queue_dir / "hold"

    def clear(self) -> None:
        if self.mode == "maildir":
            super().clear()
            return
        # Held messages are removed the supported way, not behind Postfix's back.
        assert POSTSUPER is not None
        administer([POSTSUPER, "-c", str(self.config_dir), "-d", "ALL", "hold"])


# -- loads -----------------------------------------------------------------------------------
def smtp_source(port: int, messages: int, size: int, *, reuse: bool) -> str | None:
    """Sends the load; None when every message was accepted, else what went wrong."""
    if SMTP_SOURCE is None:
        raise BenchError("smtp-source is not installed (bench/run installs postfix)")
    command = [SMTP_SOURCE, "-s", str(SESSIONS), "-m", str(messages), "-l", str(size)]
    if reuse:
        command.append("-d")  # keep the connection for the next message
    command += ["-M", "client.bench.test", "-f", SENDER, "-t", RECIPIENT, f"{HOST}:{port}"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=LOAD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return f"smtp-source did not finish within {LOAD_TIMEOUT:.0f} s"
    if result.returncode != 0:
        return f"smtp-source exit {result.returncode}: {(result.stderr or result.stdout)[-300:]}"
    return None


@dataclass
class Run:
    messages: int
    seconds: float  # smtp-source's wall time: from the first connection to the last reply
    cpu_accept: float  # server CPU seconds during that time
    cpu_total: float  # ... until everything accepted is stored (delivered, for Pigeon)
    settled: float  # seconds from the start until everything accepted was stored
    error: str | None = None
    load_cpu: float = 0.0  # smtp-source's CPU seconds
    other_cpu: float = 0.0  # CPU seconds that neither the server nor smtp-source used
    steal: float = 0.0  # CPU seconds the hypervisor took from this machine

    @property
    def other_share(self) -> float:
        """Other processes' (and the hypervisor's) CPU, in CPUs, during smtp-source's run."""
        return (self.other_cpu + self.steal) / self.seconds

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def settled_rate(self) -> float:
        return self.messages / self.settled


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(server: Server, messages: int, size: int, *, reuse: bool) -> Run:
    """One smtp-source run against the server, then a wait until all of it is stored (for
    Pigeon: delivered into the Maildir). The store is emptied afterwards."""
    server.clear()
    stored_before = server.stored()
    cpu_before = server.cpu()
    busy_before, steal_before = machine_cpu()
    load_before = children_cpu()
    start_wall = time.time()
    start = time.perf_counter()
    error = smtp_source(server.port, messages, size, reuse=reuse)
    seconds = time.perf_counter() - start
    cpu_accept = server.cpu()
    load_cpu = children_cpu() - load_before
    busy_after, steal_after = machine_cpu()
    other = max(0.0, busy_after - busy_before - load_cpu - (cpu_accept - cpu_before))
    settled = seconds
    if stored_before is not None:
        target = stored_before + messages
        timeout = SETTLE_TIMEOUT if error is None else 5.0
        if wait_stored(server, target, timeout):
            last = server.last_stored()
            polled = time.perf_counter() - start
            settled = polled if last is None else min(polled, max(seconds, last - start_wall))
        elif error is None:
            got = (server.stored() or 0) - stored_before
            error = f"only {got} of {messages} stored within {timeout:.0f} s"
    cpu_total = server.cpu()
    server.clear()
    return Run(
        messages,
        seconds,
        cpu_accept - cpu_before,
        cpu_total - cpu_before,
        settled,
        error,
        load_cpu,
        other,
        steal_after - steal_before,
    )


def background_note(runs: Sequence[Run]) -> str:
    """How much of the machine something else had while the loads ran: noise to judge by."""
    shares = [r.other_share for r in runs]
    load = [r.load_cpu / r.seconds for r in runs]
    steal = [r.steal / r.seconds for r in runs]
    if not shares:
        return "no runs"
    return (
        f"while smtp-source ran, it used {statistics.median(load):.2f} CPUs (median); other "
        f"processes, the kernel's unattributed work and the hypervisor's steal "
        f"{statistics.median(shares):.2f} CPUs (median, max {max(shares):.2f}; steal alone "
        f"median {statistics.median(steal):.2f}) of the {os.cpu_count()}"
    )


def wait_stored(server: Server, target: int, timeout: float, interval: float = 0.1) -> bool:
    return wait_until(lambda: (server.stored() or 0) >= target, timeout, interval)


def warm_up(server: Server, loads: Sequence[tuple[int, bool]]) -> None:
    """Loads that are not counted: Postfix forks its daemons, Python fills its caches."""
    send_and_settle(server, loads, what="warm-up")


def send_and_settle(
    server: Server, loads: Sequence[tuple[int, bool]], *, size: int = 1024, what: str = "load"
) -> None:
    """smtp-source loads of (messages, reuse), then the wait until the server has stored
    every message they sent (in Pigeon's queue index, say)."""
    before = server.stored()
    for messages, reuse in loads:
        error = smtp_source(server.port, messages, size, reuse=reuse)
        if error:
            raise BenchError(f"{server.name} failed the {what}: {error}\n{tail(server.log)}")
    if before is not None:
        target = before + sum(m for m, _ in loads)
        if not wait_stored(server, target, SETTLE_TIMEOUT):
            raise BenchError(f"{server.name} did not store the {what}'s messages")


@dataclass
class Scenario:
    key: str
    label: str
    size: int
    reuse: bool
    messages: int


SCENARIOS = (
    Scenario("1k-reused", "1 KiB, reused connections", 1024, True, 5000),
    Scenario("1k-new", "1 KiB, new connection per message", 1024, False, 5000),
    Scenario("100k-reused", "100 KiB, reused connections", 100 * 1024, True, 1000),
)

# Pigeon's goals from the issue, as ratios measured in the same run: (scenario, reference).
# "100 KiB >= 3x aiosmtpd" is read as aiosmtpd discarding: 3 x 354 matches 1.5 x Postfix's 711
# in the issue's own table, while 3 x aiosmtpd-maildir (186) would be a far weaker goal.
RATIO_GOALS: dict[tuple[str, str], float] = {
    ("1k-reused", "postfix"): 3.0,
    ("1k-reused", "aiosmtpd-discard"): 1.0,
    ("1k-new", "postfix"): 1.5,
    ("100k-reused", "postfix"): 1.5,
    ("100k-reused", "aiosmtpd-discard"): 3.0,
}
CPU_GOAL_US = 320.0  # Haraka's CPU per 1 KiB message, from the issue
IDLE_GOAL_KIB = 6.0
GREETING_GOAL_MS = 100.0
MAILDIR_GOAL = 1.5


# -- results ---------------------------------------------------------------------------------
def fmt_rate(values: Sequence[float]) -> str:
    if not values:
        return "failed"
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.0f}"
    return f"{median:.0f} [{min(values):.0f}-{max(values):.0f}]"


def verdict(value: float, goal: float, *, at_most: bool = False) -> str:
    met = value <= goal if at_most else value >= goal
    return "PASS" if met else "MISS"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(header), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)]
    )


def machine() -> str:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postfix_version = "not installed"
    if POSTCONF is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            postfix_version = subprocess.run(
                [POSTCONF, "-h", "mail_version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
    versions = {}
    for name, python in (("pigeon venv", PIGEON.with_name("python")), ("ref venv", REF_PYTHON)):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            versions[name] = subprocess.run(
                [
                    str(python),
                    "-c",
                    "import sys, importlib.metadata as m\n"
                    "out = [sys.version.split()[0]]\n"
                    "for p in ('pigeon-mta', 'aiosmtpd', 'uvloop'):\n"
                    "    try: out.append(f'{p} {m.version(p)}')\n"
                    "    except m.PackageNotFoundError: pass\n"
                    "print(', '.join(out))",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.strip()
    node = "not installed"
    if HARAKA.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            node = subprocess.run(
                ["node", "--version"], capture_output=True, text=True, timeout=30, check=False
            ).stdout.strip()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{now}; {os.cpu_count()} CPUs ({model}); load average {load} at the end; "
        f"Linux {platform.release()}; "
        f"Postfix {postfix_version}; Python {versions.get('pigeon venv', '?')} "
        f"(reference venv: Python {versions.get('ref venv', '?')}); "
        f"Haraka {HARAKA_VERSION if HARAKA.exists() else 'not installed'} on Node.js {node}"
    )


# The sections of bench/results.md, in their order there: one per mode.
_SECTIONS = ("throughput", "idle", "maildir", "instructions", "sync")


def save_section(mode: str, text: str) -> None:
    """Replaces this mode's section of bench/results.md (the others stay as they were)."""
    begin, end = f"<!-- bench:{mode} -->", f"<!-- /bench:{mode} -->"
    sections: dict[str, str] = {}
    if RESULTS.exists():
        current = RESULTS.read_text()
        for name in _SECTIONS:
            b, e = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
            if b in current and e in current:
                sections[name] = current[current.index(b) : current.index(e) + len(e)]
    sections[mode] = f"{begin}\n{text.rstrip()}\n{end}"
    body = "\n\n".join(sections[m] for m in _SECTIONS if m in sections)
    RESULTS.write_text(
        "# Pigeon benchmark results\n\n"
        "Written by `bench/run` (see the README's benchmark section); each mode replaces its "
        "own section.\n\n" + body + "\n"
    )
    print(f"\nbench: wrote the {mode} section of {RESULTS}")


# -- the modes ---------------------------------------------------------------------------------
@dataclass
class Options:
    quick: bool
    runs: int
    only: set[str] | None
    keep: bool
    workdir: Path
    workers: bool = field(default=False)

    def scale(self, messages: int) -> int:
        return max(100, messages // 5) if self.quick else messages

    def wanted(self, name: str) -> bool:
        return self.only is None or any(name.startswith(o) for o in self.only)


def make_dir(options: Options, name: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=options.workdir))
    path.chmod(0o755)  # Postfix's daemons and user nobody must reach their directories
    return path


def pigeon_variants(
    options: Options,
    *,
    held: bool = False,
    compiled: bool = False,
    connections: int | None = None,
) -> list[PigeonServer]:
    """Pigeon as started by default, and with --workers 1 when it has that flag; with
    ``held``, also Pigeon holding every message as the Postfix reference does; with
    ``compiled``, also the compiled build (holding, when ``held``)."""
    servers = [PigeonServer(make_dir(options, "pigeon"), workers=None, connections=connections)]
    if options.workers:
        one = PigeonServer(make_dir(options, "pigeon-1w"), workers=1, connections=connections)
        servers.insert(0, one)
    if held:
        servers.append(PigeonServer(make_dir(options, "pigeon-held"), workers=None, held=True))
    if compiled:
        servers.append(
            PigeonServer(
                make_dir(options, "pigeon-compiled"),
                workers=None,
                connections=connections,
                held=held,
                compiled=True,
            )
        )
    return [s for s in servers if options.wanted(s.name)]


@contextlib.contextmanager
def started(servers: list[Server]) -> Iterator[list[Server]]:
    """Starts each server (leaving out those that cannot run here); stops all at the end."""
    up: list[Server] = []
    try:
        for server in servers:
            try:
                server.start()
            except Skip as why:
                print(f"bench: leaving out {server.name}: {why}", file=sys.stderr)
                server.stop()
                continue
            print(f"bench: {server.name} listening on {HOST}:{server.port} ({server.workdir})")
            up.append(server)
        yield up
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as error:  # stop the others all the same
                print(f"bench: stopping {server.name}: {error}", file=sys.stderr)


def throughput(options: Options) -> str:
    servers: list[Server] = [*pigeon_variants(options, held=True, compiled=True)]
    servers += [PostfixServer(make_dir(options, "postfix"), mode="hold")]
    servers += [
        AiosmtpdServer(make_dir(options, f"aiosmtpd-{m}"), mode=m) for m in ("discard", "maildir")
    ]
    servers += [HarakaServer(make_dir(options, "haraka"))]
    servers = [s for s in servers if options.wanted(s.name)]
    results: dict[tuple[str, str], list[Run]] = {}
    with started(servers) as up:
        for server in up:  # warm-up, not counted: Postfix forks its daemons, Python warms up
            scale = server.warm_up_scale
            warm_up(server, [(200 * scale, True), (40 * scale, False)])
        for scenario in SCENARIOS:
            messages = options.scale(scenario.messages)
            for run in range(options.runs):
                # Each run in another order, so that no server always follows the same one.
                order = up[run % len(up) :] + up[: run % len(up)]
                for server in order:
                    result = measure(server, messages, scenario.size, reuse=scenario.reuse)
                    results.setdefault((scenario.key, server.name), []).append(result)
                    print(
                        f"bench: {scenario.label:34} run {run + 1}/{options.runs} "
                        f"{server.name:17} {result.rate:7.0f} msg/s "
                        f"{result.cpu_total / messages * 1e6:6.0f} us/msg  "
                        f"(others {result.other_share:.2f} CPUs)  {result.error or 'ok'}",
                        flush=True,
                    )
        names = [s.name for s in up]
    return report_throughput(options, names, results)


def report_throughput(
    options: Options, names: list[str], results: dict[tuple[str, str], list[Run]]
) -> str:
    pigeon = next((n for n in names if n == "pigeon"), None) or next(
        (n for n in names if n.startswith("pigeon") and not n.endswith("-held")), None
    )
    held = [n for n in names if n.startswith("pigeon") and n.endswith("-held")]
    # Pigeon delivering everything, and Pigeon holding everything (the reference's own work),
    # pure Python and compiled.
    compared = [n for n in (pigeon, *held) if n is not None]
    references = [n for n in names if not n.startswith("pigeon")]

    def good(scenario: str, name: str) -> list[Run]:
        return [r for r in results.get((scenario, name), []) if r.error is None]

    def median_rate(scenario: str, name: str) -> float | None:
        runs = good(scenario, name)
        return statistics.median(r.rate for r in runs) if runs else None

    def median_cpu(scenario: str, name: str, *, total: bool = True) -> float | None:
        runs = good(scenario, name)
        if not runs:
            return None
        return statistics.median(
            (r.cpu_total if total else r.cpu_accept) / r.messages * 1e6 for r in runs
        )

    # One row per server, one column per load; then Pigeon's ratios, one row per load and
    # Pigeon variant, one column per reference (a table as wide as the references are many).
    header = ["server", *(scenario.label for scenario in SCENARIOS)]
    rows: list[list[str]] = []
    for name in names:
        row = [name]
        for scenario in SCENARIOS:
            cpu = median_cpu(scenario.key, name)
            rate = fmt_rate([r.rate for r in good(scenario.key, name)])
            row.append(rate if cpu is None else f"{rate}, {cpu:.0f} us")
        rows.append(row)
    ratio_header = ["load", "Pigeon", *(f"/ {ref}" for ref in references)]
    ratio_rows: list[list[str]] = []
    goals: list[str] = []
    for scenario in SCENARIOS:
        for index, variant in enumerate(compared):
            ratio_row = [scenario.label if index == 0 else "", variant]
            ours = median_rate(scenario.key, variant)
            for ref in references:
                theirs = median_rate(scenario.key, ref)
                goal = RATIO_GOALS.get((scenario.key, ref))
                if ours is None or theirs is None:
                    ratio_row.append("-")
                    continue
                ratio = ours / theirs
                cell = f"{ratio:.2f}x"
                if goal is not None:
                    cell += f" (>= {goal:g}x {verdict(ratio, goal)})"
                    goals.append(
                        f"{scenario.label}: {variant} {ratio:.2f}x {ref}, goal >= {goal:g}x: "
                        f"{verdict(ratio, goal)}"
                    )
                ratio_row.append(cell)
            ratio_rows.append(ratio_row)
    haraka_cpu = median_cpu("1k-reused", HarakaServer.name)
    for variant in compared:
        cpu = median_cpu("1k-reused", variant)
        work = "accept, held in the queue" if variant in held else "accept + Maildir delivery"
        if cpu is None:
            continue
        if haraka_cpu is not None:
            goals.append(
                f"server CPU per 1 KiB message (reused connections, {work}): {variant} "
                f"{cpu:.0f} us, goal <= {HarakaServer.name} in this run, {haraka_cpu:.0f} us: "
                f"{verdict(cpu, haraka_cpu, at_most=True)} ({cpu / haraka_cpu:.2f}x)"
            )
        goals.append(
            f"server CPU per 1 KiB message (reused connections, {work}): {variant} "
            f"{cpu:.0f} us, against the issue's figure for Haraka on its own machine, "
            f"{CPU_GOAL_US:.0f} us: {verdict(cpu, CPU_GOAL_US, at_most=True)}"
        )
    notes = [
        f"{options.runs} runs per cell; {SESSIONS} parallel smtp-source sessions on the same "
        f"{os.cpu_count()} CPUs as the servers; messages per run: "
        + ", ".join(f"{s.label} {options.scale(s.messages)}" for s in SCENARIOS)
        + (" (--quick)" if options.quick else "")
        + ".",
        "First table: messages per second (messages / smtp-source's wall time), median "
        "[min-max], then the server's CPU time per message in microseconds (user+system of its "
        "whole process tree from /proc/PID/stat, reaped children included), median. Second "
        "table: Pigeon's median msg/s over each reference's, with the issue's goal.",
        "Pigeon fsyncs every message into its spool before 250 and delivers it into the "
        "Maildir in the background while the load runs; its CPU column includes that "
        "delivery (each run waits until every message is in the Maildir).",
        "pigeon-held: the recipient's domain is held for on-demand relay (`[odmr]`), so every "
        "message, after its fsync and 250, is recorded in the queue index as held and waits "
        "there: the work the reference Postfix does (the run waits until the index has every "
        "message). Between runs its queue is emptied with `pigeon queue delete --all`, as "
        "Postfix's with `postsuper -d ALL hold`.",
        "pigeon-compiled-held: pigeon-held with the compiled build (`PIGEON_COMPILE=1 pip "
        "install .`: the modules setup.py lists, compiled with mypyc), built by bench/run "
        "from the same tree.",
        "postfix: a private Postfix instance accepting into its queue (cleanup fsyncs the "
        "queue file before 250) with every message put on hold (smtpd_data_restrictions = "
        "check_client_access static:HOLD): nothing is delivered.",
        "aiosmtpd-discard: aiosmtpd 1.4.6 on uvloop, storing nothing. aiosmtpd-maildir: "
        "aiosmtpd 1.4.6 on asyncio, writing each message to Maildir with fsync of the file "
        "and of new/ before 250.",
        f"{HarakaServer.name}: Haraka {HARAKA_VERSION} on Node.js, discarding every message "
        "(plugins rcpt_to.in_host_list and queue/discard), one worker per core (nodes=cpus), "
        "logging at NOTICE (a line or two per message, like Pigeon), reverse lookups answered "
        "without DNS as the others make none.",
        f"The issue's CPU goal, {CPU_GOAL_US:.0f} us, is Haraka's figure on the issue's machine; "
        "like every other goal it is also read as a ratio, against Haraka measured in this "
        "run.",
    ]
    if pigeon:
        accept_cpu = [
            f"{s.label} {c:.0f}"
            for s in SCENARIOS
            if (c := median_cpu(s.key, pigeon, total=False)) is not None
        ]
        if accept_cpu:
            notes.append(
                f"{pigeon} CPU us/msg during the load alone (delivery partly still to come): "
                + ", ".join(accept_cpu)
                + "."
            )
    if not options.workers:
        notes.append("`pigeon serve` has no --workers flag in this build: one process only.")
    else:
        notes.append(
            "pigeon: `pigeon serve` with its default number of workers (one per core, "
            "SO_REUSEPORT); pigeon-1w: `--workers 1`."
        )
    notes.append("Noise: " + background_note([r for rs in results.values() for r in rs]) + ".")
    errors = [
        f"{scenario} / {name} run {i + 1}: {r.error}"
        for (scenario, name), runs in results.items()
        for i, r in enumerate(runs)
        if r.error
    ]
    text = "\n".join(
        [
            "## Throughput",
            "",
            f"Machine: {machine()}",
            "",
            markdown_table(header, rows),
            "",
            markdown_table(ratio_header, ratio_rows),
            "",
            "Goals (ratios measured in this run):",
            "",
            *(f"- {g}" for g in goals),
            "",
            "Notes:",
            "",
            *(f"- {n}" for n in notes),
            *(["", "Failed runs (left out of the medians):", ""] if errors else []),
            *(f"- {e}" for e in errors),
        ]
    )
    print("\n" + text)
    return text


@dataclass
class IdleResult:
    server: str
    wanted: int
    held: int
    failures: dict[str, int]
    rss_before: int
    rss_after: int
    pss_before: int
    pss_after: int
    open_seconds: float
    latencies: list[float]

    def per_connection(self, pss: bool = False) -> float:
        before, after = (
            (self.pss_before, self.pss_after) if pss else (self.rss_before, self.rss_after)
        )
        return (after - before) / self.held if self.held else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def _hold_idle(
    server: Server, connections: int, samples: int
) -> tuple[int, dict[str, int], float, tuple[int, int], list[float]]:
    """Opens the idle connections, measures memory and greeting latency, closes them."""
    held: list[asyncio.StreamWriter] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(256)  # connections being opened at once

    async def open_one() -> None:
        async with gate:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, server.port), 30
                )
            except (OSError, TimeoutError) as error:
                failures[f"connect: {type(error).__name__}"] += 1
                return
            try:
                line = await asyncio.wait_for(reader.readline(), 30)
            except (OSError, TimeoutError) as error:
                failures[f"greeting: {type(error).__name__}"] += 1
                writer.close()
                return
            if not line.startswith(b"220"):
                failures[f"greeting: {line[:40]!r}"] += 1
                writer.close()
                return
            held.append(writer)

    start = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(connections)))
    open_seconds = time.perf_counter() - start
    await asyncio.sleep(2.0)  # let the server settle (and collect what it will)
    memory = memory_kib(server.pids())
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(samples):
        try:
            latencies.append(await loop.run_in_executor(None, greeting_time, server.port, 10.0))
        except (OSError, BenchError) as error:
            failures[f"new client: {error}"] += 1
        await asyncio.sleep(0.05)
    count = len(held)
    for writer in held:
        writer.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_closed() for w in held), return_exceptions=True), 30
        )
    return count, dict(failures), open_seconds, memory, latencies


def idle(options: Options) -> str:
    samples = 30 if options.quick else 100
    results: list[IdleResult] = []
    plan = [(n, kind) for n in (1000, 10000) for kind in ("pigeon", "aiosmtpd", "haraka")]
    # Postfix runs one smtpd process per connection: 1,000 of them only.
    plan.append((1000, "postfix"))
    for count, kind in plan:
        candidates: list[Server]
        if kind == "pigeon":
            candidates = [*pigeon_variants(options, connections=2 * count)]
        elif kind == "aiosmtpd":
            candidates = [AiosmtpdServer(make_dir(options, "aiosmtpd"), mode="discard")]
        elif kind == "haraka":
            candidates = [HarakaServer(make_dir(options, "haraka"))]
        else:
            candidates = [
                PostfixServer(make_dir(options, "postfix"), mode="idle", process_limit=1100)
            ]
        for server in candidates:
            if options.wanted(server.name):
                result = idle_one(server, count, samples)
                if result is not None:
                    results.append(result)
    return report_idle(options, results)


def idle_one(server: Server, count: int, samples: int) -> IdleResult | None:
    """Holds ``count`` idle connections to a freshly started server; None if it cannot run."""
    with started([server]) as up:
        if not up:
            return None
        greeting_time(server.port)  # one session first: the baseline includes its setup
        time.sleep(1.0)
        rss_before, pss_before = memory_kib(server.pids())
        held, failures, open_seconds, (rss, pss), latencies = asyncio.run(
            _hold_idle(server, count, samples)
        )
    result = IdleResult(
        server.name,
        count,
        held,
        failures,
        rss_before,
        rss,
        pss_before,
        pss,
        open_seconds,
        latencies,
    )
    p50 = percentile(latencies, 0.5) * 1e3 if latencies else math.nan
    print(
        f"bench: idle {server.name:17} {held}/{count} held in {open_seconds:.1f} s, "
        f"{result.per_connection():.1f} KiB/conn (RSS), "
        f"{result.per_connection(pss=True):.1f} KiB/conn (PSS), greeting p50 "
        f"{p50:.1f} ms" + (f", failures {failures}" if failures else ""),
        flush=True,
    )
    return result


def report_idle(options: Options, results: list[IdleResult]) -> str:
    header = [
        "server",
        "connections held",
        "RSS before -> after (MiB)",
        "KiB/conn (RSS)",
        "KiB/conn (PSS)",
        "new client's greeting p50 / p99 / max (ms)",
        "goal",
    ]
    rows = []
    goals = []
    for r in results:
        lat = [x * 1e3 for x in r.latencies]
        latency = (
            f"{percentile(lat, 0.5):.1f} / {percentile(lat, 0.99):.1f} / {max(lat):.1f}"
            if lat
            else "none"
        )
        goal = "-"
        if r.server.startswith("pigeon"):
            kib = r.per_connection()
            p99 = percentile(lat, 0.99) if lat else math.inf
            ok = kib <= IDLE_GOAL_KIB and (r.wanted < 10000 or p99 <= GREETING_GOAL_MS)
            ok = ok and r.held == r.wanted
            goal = f"<= {IDLE_GOAL_KIB:g} KiB" + (
                f", p99 <= {GREETING_GOAL_MS:g} ms" if r.wanted >= 10000 else ""
            )
            goal += f": {'PASS' if ok else 'MISS'}"
            goals.append(f"{r.server} with {r.wanted} idle connections: {goal}")
        rows.append(
            [
                r.server,
                f"{r.held} of {r.wanted}",
                f"{r.rss_before / 1024:.1f} -> {r.rss_after / 1024:.1f}",
                f"{r.per_connection():.2f}",
                f"{r.per_connection(pss=True):.2f}",
                latency,
                goal,
            ]
        )
    notes = [
        "Each count runs against a freshly started server; memory is the sum over the "
        "server's process tree after one warm-up session and again 2 s after every idle "
        "connection got its 220 greeting; the difference is divided by the connections held.",
        "RSS and PSS count the server's user-space memory only: the kernel's socket buffers "
        "are not in them (nor in the issue's figures).",
        f"Greeting latency: {30 if options.quick else 100} new clients, one at a time, each "
        "timed from connect() to the end of its 220 greeting, while the idle ones are held.",
        "aiosmtpd-discard: aiosmtpd 1.4.6 on uvloop. postfix: one smtpd process per "
        "connection (process_limit 1100), so 1,000 connections only; its RSS sum counts "
        "shared libraries once per process, PSS does not.",
        f"{HarakaServer.name}: Haraka {HARAKA_VERSION} on Node.js, one worker per core.",
    ]
    failures = [f"{r.server} ({r.wanted}): {r.failures}" for r in results if r.failures]
    text = "\n".join(
        [
            "## Idle connections",
            "",
            f"Machine: {machine()}",
            "",
            markdown_table(header, rows),
            "",
            "Goals:",
            "",
            *(f"- {g}" for g in goals),
            "",
            "Notes:",
            "",
            *(f"- {n}" for n in notes),
            *(["", "Failures:", ""] if failures else []),
            *(f"- {f}" for f in failures),
        ]
    )
    print("\n" + text)
    return text


def maildir(options: Options) -> str:
    messages = options.scale(5000)
    servers: list[Server] = [*pigeon_variants(options, compiled=True)]
    servers += [
        PostfixServer(make_dir(options, "postfix-maildir"), mode="maildir"),
        AiosmtpdServer(make_dir(options, "aiosmtpd-maildir"), mode="maildir"),
    ]
    servers = [s for s in servers if options.wanted(s.name)]
    results: dict[str, list[Run]] = {}
    with started(servers) as up:
        for server in up:  # warm-up, not counted
            warm_up(server, [(200, True)])
        for run in range(options.runs):
            order = up[run % len(up) :] + up[: run % len(up)]
            for server in order:
                result = measure(server, messages, 1024, reuse=True)
                results.setdefault(server.name, []).append(result)
                print(
                    f"bench: maildir run {run + 1}/{options.runs} {server.name:17} "
                    f"{result.settled_rate:7.0f} msg/s delivered "
                    f"(accepted at {result.rate:.0f} msg/s; others {result.other_share:.2f} CPUs)  "
                    f"{result.error or 'ok'}",
                    flush=True,
                )
        names = [s.name for s in up]
    good = {n: [r for r in results.get(n, []) if r.error is None] for n in names}
    medians = {
        n: statistics.median(r.settled_rate for r in runs) for n, runs in good.items() if runs
    }
    pigeon = "pigeon" if "pigeon" in medians else next((n for n in medians if "pigeon" in n), None)
    header = [
        "server",
        "accepted and delivered msg/s",
        "accepted msg/s",
        "CPU us/msg",
        f"{pigeon} / this" if pigeon else "ratio",
    ]
    rows, goals = [], []
    for name in names:
        runs = good[name]
        cpu = statistics.median(r.cpu_total / r.messages * 1e6 for r in runs) if runs else None
        ratio = "-"
        if pigeon and name in medians and not name.startswith("pigeon"):
            value = medians[pigeon] / medians[name]
            ratio = f"{value:.2f}x"
            if name == "postfix-maildir":
                ratio += f" (>= {MAILDIR_GOAL:g}x {verdict(value, MAILDIR_GOAL)})"
                goals.append(
                    f"accept + deliver to Maildir: {pigeon} {value:.2f}x Postfix, goal >= "
                    f"{MAILDIR_GOAL:g}x: {verdict(value, MAILDIR_GOAL)}"
                )
        rows.append(
            [
                name,
                fmt_rate([r.settled_rate for r in runs]),
                fmt_rate([r.rate for r in runs]),
                "-" if cpu is None else f"{cpu:.0f}",
                ratio,
            ]
        )
    errors = [
        f"{n} run {i + 1}: {r.error}"
        for n, rs in results.items()
        for i, r in enumerate(rs)
        if r.error
    ]
    notes = [
        f"{messages} messages of 1 KiB per run, {SESSIONS} parallel sessions over reused "
        f"connections, {options.runs} runs, median [min-max]. Delivered msg/s: messages / time "
        "from the start of smtp-source until the last message became a file in the Maildir's "
        "new/ (that file's inode change time, which the rename into new/ sets; the Maildir "
        "is emptied between runs).",
        "postfix-maildir: a private Postfix instance delivering with virtual(8) into a "
        "Maildir (default concurrency and in_flow_delay). aiosmtpd-maildir writes the Maildir "
        "itself before 250 (fsync of the file and of new/), so accepted = delivered.",
        "CPU: the server's whole process tree, until every message was delivered.",
        "pigeon-compiled: the compiled build (`PIGEON_COMPILE=1 pip install .`, mypyc), "
        "built by bench/run from the same tree.",
        "Noise: " + background_note([r for rs in results.values() for r in rs]) + ".",
    ]
    text = "\n".join(
        [
            "## Accept and deliver to Maildir, sustained",
            "",
            f"Machine: {machine()}",
            "",
            markdown_table(header, rows),
            "",
            "Goals:",
            "",
            *(f"- {g}" for g in goals),
            "",
            "Notes:",
            "",
            *(f"- {n}" for n in notes),
            *(["", "Failed runs:", ""] if errors else []),
            *(f"- {e}" for e in errors),
        ]
    )
    print("\n" + text)
    return text


# -- instructions ------------------------------------------------------------------------------
INSTRUCTION_SCENARIOS = (SCENARIOS[0], SCENARIOS[1])  # 1 KiB, reused and new connections


class Callgrind:
    """A server run under callgrind: its counters are zeroed before a load and dumped after
    it (``callgrind_control``), so that start-up and warm-up are not counted."""

    def __init__(self, server: ProcessServer) -> None:
        if VALGRIND is None or CALLGRIND_CONTROL is None:
            raise Skip("valgrind is not installed (bench/run instructions installs it)")
        self.server = server
        self.dumps = server.workdir / "callgrind"
        self.dumps.mkdir(exist_ok=True)
        server.wrapper = [
            VALGRIND,
            "--tool=callgrind",
            f"--callgrind-out-file={self.dumps}/callgrind.%p",
            "--dump-instr=no",
        ]
        server.start_timeout = CALLGRIND_START_TIMEOUT

    def _control(self, flag: str) -> None:
        pid = self.server.root_pid()
        if pid is None or CALLGRIND_CONTROL is None:
            raise BenchError(f"{self.server.name} is not running")
        subprocess.run(
            [CALLGRIND_CONTROL, flag, str(pid)], capture_output=True, timeout=120, check=True
        )

    def count(self, load: Callable[[], None]) -> int:
        """Instructions the server ran (all its threads, user space) while ``load`` ran."""
        self._control("--zero")
        before = set(self.dumps.iterdir())
        load()
        self._control("--dump")
        for _ in range(100):  # the dump is written by the server's own thread: wait for it
            new = sorted(set(self.dumps.iterdir()) - before)
            if new:
                break
            time.sleep(0.1)
        else:
            raise BenchError(f"callgrind wrote no dump for {self.server.name}")
        for line in new[-1].read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
        raise BenchError(f"no totals in {new[-1]}")


def instructions(options: Options) -> str:
    servers: list[ProcessServer] = [
        PigeonServer(make_dir(options, "pigeon-1w-held"), workers=1, held=True),
        PigeonServer(make_dir(options, "pigeon-1w-compiled"), workers=1, held=True, compiled=True),
        AiosmtpdServer(make_dir(options, "aiosmtpd-discard"), mode="discard"),
    ]
    servers = [s for s in servers if options.wanted(s.name)]
    try:
        counters = {server.name: Callgrind(server) for server in servers}
    except Skip as why:
        raise BenchError(str(why)) from None
    messages = 100 if options.quick else 500
    results: dict[tuple[str, str], int] = {}
    with started(list(servers)) as up:
        for server in up:
            warm_up(server, [(50, True), (20, False)])
            for scenario in INSTRUCTION_SCENARIOS:
                load = functools.partial(
                    send_and_settle, server, [(messages, scenario.reuse)], size=scenario.size
                )
                per_message = counters[server.name].count(load) // messages
                results[(scenario.key, server.name)] = per_message
                print(
                    f"bench: {scenario.label:34} {server.name:20} "
                    f"{per_message:9,d} instructions/msg",
                    flush=True,
                )
        names = [s.name for s in up]
    return report_instructions(names, results, messages)


def report_instructions(names: list[str], results: dict[tuple[str, str], int], n: int) -> str:
    reference = "aiosmtpd-discard"
    ours = [name for name in names if name != reference]
    header = ["scenario", *(f"{name}: instructions/msg" for name in names)]
    header += [f"{name} / {reference}" for name in ours]
    rows = []
    for scenario in INSTRUCTION_SCENARIOS:
        row = [scenario.label, *(f"{results[(scenario.key, name)]:,d}" for name in names)]
        theirs = results.get((scenario.key, reference))
        for name in ours:
            row.append(f"{results[(scenario.key, name)] / theirs:.2f}x" if theirs else "-")
        rows.append(row)
    text = "\n".join(
        [
            "## Instructions per message",
            "",
            f"Machine: {machine()}",
            "",
            markdown_table(header, rows),
            "",
            "Notes:",
            "",
            f"- {n} messages per scenario from {SESSIONS} parallel smtp-source sessions, after a"
            " warm-up that is not counted; each server runs under valgrind's callgrind, which"
            " counts the instructions of all its threads in user space. What the kernel does"
            " for it (system calls, TCP, fsync) is not counted.",
            "- pigeon-1w-held: `pigeon serve --workers 1`, every message held in the queue as"
            " in the throughput table's pigeon-held; -compiled: the compiled build.",
            "- A count, not a time: it moves by about 1 % between runs, so it shows what a"
            " change to the code costs or saves when the machine is too noisy for msg/s to.",
            "- Under valgrind a server runs some 50 times slower, so work done in batches"
            " costs more per message than at full speed: the queue index, written every"
            " 50 ms, takes one or two held messages per transaction here and dozens in the"
            " throughput table.",
        ]
    )
    print("\n" + text)
    return text


# -- sync ----------------------------------------------------------------------------------------
SYNC_BATCH = 12 * 1024  # about ten 1 KiB records with their envelopes: one batch under load


@dataclass
class SyncResult:
    way: str
    seconds: float
    latencies: list[float]  # of each write and its fdatasync
    process_cpu: float  # this process's CPU seconds
    machine_cpu: float  # the whole machine's: the file system's journal thread too

    def per_sync_us(self, cpu: float) -> float:
        return cpu / len(self.latencies) * 1e6


def sync_cost(directory: Path, way: str, writes: int) -> SyncResult:
    """``writes`` batches written one after another, each followed by an ``fdatasync``:
    appended to an empty file, or written over zeros that were written and synced first."""
    path = directory / f"{way}.seg"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if way == "prepared":
            zeros = bytes(1 << 20)
            for offset in range(0, writes * SYNC_BATCH, len(zeros)):
                os.pwrite(fd, zeros, offset)
            os.fdatasync(fd)
        batch = os.urandom(SYNC_BATCH)
        latencies = []
        busy_before, _ = machine_cpu()
        cpu_before = time.process_time()
        start = time.perf_counter()
        for i in range(writes):
            began = time.perf_counter()
            os.pwrite(fd, batch, i * SYNC_BATCH)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - began)
        seconds = time.perf_counter() - start
        process = time.process_time() - cpu_before
        busy_after, _ = machine_cpu()
    finally:
        os.close(fd)
        path.unlink()
    return SyncResult(way, seconds, latencies, process, busy_after - busy_before)


def sync(options: Options) -> str:
    writes = 1000 if options.quick else 5000
    directory = make_dir(options, "sync")
    results: dict[str, list[SyncResult]] = {}
    for run in range(options.runs):
        for way in ("append", "prepared"):
            result = sync_cost(directory, way, writes)
            results.setdefault(way, []).append(result)
            print(
                f"bench: sync run {run + 1}/{options.runs} {way:8} "
                f"{writes / result.seconds:6.0f} syncs/s, p50 "
                f"{percentile(result.latencies, 0.5) * 1e3:.2f} ms, "
                f"{result.per_sync_us(result.machine_cpu):4.0f} us of machine CPU per sync",
                flush=True,
            )
    return report_sync(options, results, writes)


def report_sync(options: Options, results: dict[str, list[SyncResult]], writes: int) -> str:
    def median(way: str, value: Callable[[SyncResult], float]) -> float:
        return statistics.median(value(r) for r in results[way])

    header = [
        "way",
        "syncs/s",
        "latency p50",
        "latency p99",
        "process CPU per sync",
        "machine CPU per sync",
    ]
    rows = [
        [
            way,
            f"{median(way, lambda r: writes / r.seconds):.0f}",
            f"{median(way, lambda r: percentile(r.latencies, 0.5)) * 1e3:.2f} ms",
            f"{median(way, lambda r: percentile(r.latencies, 0.99)) * 1e3:.2f} ms",
            f"{median(way, lambda r: r.per_sync_us(r.process_cpu)):.0f} us",
            f"{median(way, lambda r: r.per_sync_us(r.machine_cpu)):.0f} us",
        ]
        for way in ("append", "prepared")
    ]
    text = "\n".join(
        [
            "## The cost of a small fdatasync",
            "",
            f"Machine: {machine()}; the file system of {options.workdir}: "
            f"{file_system(options.workdir)}",
            "",
            markdown_table(header, rows),
            "",
            "Notes:",
            "",
            f"- {writes} writes of {SYNC_BATCH // 1024} KiB (a batch of about ten 1 KiB records"
            " with their envelopes), each followed by an fdatasync, one after another; medians"
            f" of {options.runs} runs each, taken in turn.",
            "- append: each write extends the file, so each sync also commits the file"
            " system's journal (the new size and blocks). prepared: the file was filled with"
            " zeros and synced first, so each sync writes data only; what Pigeon's spool does"
            " ahead of its records.",
            "- machine CPU: the busy time of every CPU meanwhile, from /proc/stat: the journal"
            " thread and the block layer too, which the process's own CPU does not include."
            " /proc/stat counts in ticks of 10 ms, so the two CPU columns may differ by a few"
            " microseconds either way.",
        ]
    )
    print("\n" + text)
    return text


def file_system(path: Path) -> str:
    """The type of the file system that holds ``path``, from /proc/mounts."""
    resolved = path.resolve()
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            # The longest mount point that holds the path is the one it is on.
            if (
                len(fields) > 2
                and resolved.is_relative_to(fields[1])
                and len(fields[1]) > len(best)
            ):
                best, kind = fields[1], fields[2]
    return kind


# -- main --------------------------------------------------------------------------------------
def raise_file_limit() -> int:
    """As many open files as allowed (children inherit it): 10,000 idle connections need it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(hard, 65536) if os.geteuid() == 0 else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "mode",
        nargs="?",
        default="throughput",
        choices=("throughput", "idle", "maildir", "instructions", "sync", "all"),
    )
    parser.add_argument("--quick", action="store_true", help="a fifth of the messages")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="only servers whose name starts so"
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' directories")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not PIGEON.exists():
        print(f"bench: {PIGEON} is missing; run bench/run, which installs it", file=sys.stderr)
        return 2
    files = raise_file_limit()
    if files < 10000 + 200 and args.mode in ("idle", "all"):
        # This process holds the 10,000 idle connections; the server, which inherits the
        # limit, holds their other ends.
        print(
            f"bench: warning: only {files} open files allowed: too few for 10,000 connections",
            file=sys.stderr,
        )

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    workdir = Path(tempfile.mkdtemp(prefix="pigeon-bench-"))
    workdir.chmod(0o755)
    options = Options(
        quick=args.quick,
        runs=args.runs,
        only=set(args.only) if args.only else None,
        keep=args.keep,
        workdir=workdir,
        workers=pigeon_has_workers(),
    )
    modes = ("throughput", "idle", "maildir") if args.mode == "all" else (args.mode,)
    status = 0
    try:
        for mode in modes:
            print(f"\nbench: == {mode}{' (quick)' if options.quick else ''} ==", flush=True)
            runner = {
                "throughput": throughput,
                "idle": idle,
                "maildir": maildir,
                "instructions": instructions,
                "sync": sync,
            }[mode]
            try:
                save_section(mode, runner(options))
            except BenchError as error:
                print(f"bench: {mode} failed: {error}", file=sys.stderr)
                status = 1
    finally:
        for server in list(Server.running):
            with contextlib.suppress(Exception):
                server.stop()
        if options.keep:
            print(f"bench: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
