"""Dovecot on loopback, for reading back Maildirs that Pigeon filled, as a mail reader would.

Dovecot will not run its mail processes as root, so the Maildirs are copied into a fresh
directory owned by Dovecot's own user; the test then reads them over IMAP with imaplib.
Needs Debian's dovecot-imapd (scripts/test installs it) and root (to start Dovecot as a
system service would); tests skip otherwise.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.peers import free_port

__all__ = ["DOVECOT", "Dovecot"]

DOVECOT = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin")
PASSWORD = "dovecot-test-password"

_CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:{root}/mail/%n
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class Dovecot:
    """``with Dovecot({"alice": maildir}) as imap: imap.subjects("alice")``"""

    def __init__(self, maildirs: dict[str, Path]) -> None:
        assert DOVECOT is not None, "dovecot is not installed"
        self._maildirs = maildirs
        self.root = Path(tempfile.mkdtemp(prefix="pigeon-dovecot-"))
        self.port = free_port()

    def __enter__(self) -> Dovecot:
        user = pwd.getpwnam("dovecot")
        os.chmod(self.root, 0o711)  # Dovecot's user must reach its mail below
        for name, maildir in self._maildirs.items():
            shutil.copytree(maildir, self.root / "mail" / name)
        for path in (self.root / "mail", self.root / "home"):
            path.mkdir(exist_ok=True)
            for directory, _, files in os.walk(path):
                os.chown(directory, user.pw_uid, user.pw_gid)
                for file in files:
                    os.chown(Path(directory) / file, user.pw_uid, user.pw_gid)
        config = self.root / "dovecot.conf"
        config.write_text(
            _CONFIG.format(
                root=self.root, port=self.port, password=PASSWORD, uid=user.pw_uid, gid=user.pw_gid
            )
        )
        assert DOVECOT is not None
        # Not captured: the daemon keeps whatever it inherits open, and a pipe would never end.
        subprocess.run(
            [DOVECOT, "-c", str(config)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with imaplib.IMAP4("127.0.0.1", self.port, timeout=2):
                    return self
            except OSError:
                time.sleep(0.05)
        log = self.log()
        self.__exit__(None, None, None)  # stop what did start, and remove the directory
        raise AssertionError(f"dovecot did not start: {log}")

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def messages(self, user: str) -> list[bytes]:
        """Every message in ``user``'s INBOX, as IMAP returns it (RFC822)."""
        with imaplib.IMAP4("127.0.0.1", self.port, timeout=10) as imap:
            imap.login(user, PASSWORD)
            status, data = imap.select("INBOX", readonly=True)
            assert status == "OK", data
            count = int(data[0] or b"0")
            found = []
            for number in range(1, count + 1):
                status, parts = imap.fetch(str(number), "(RFC822)")
                assert status == "OK", parts
                first = parts[0]
                assert isinstance(first, tuple)
                found.append(first[1])
            imap.logout()
        return found

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert DOVECOT is not None
        subprocess.run(
            [DOVECOT, "-c", str(self.root / "dovecot.conf"), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
