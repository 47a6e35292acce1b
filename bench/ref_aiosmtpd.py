"""A reference server for the benchmark: aiosmtpd with one of two handlers.

Runs in ``bench/.venv-ref`` (aiosmtpd 1.4.6 and uvloop), never in Pigeon's environment, so
the reference is what a user of aiosmtpd gets and not something Pigeon's dependencies changed.

- ``discard``: accepts every message for the one user and throws it away (with uvloop by
  default, as in the issue's table). Nothing is stored: an upper bound, not a safe server.
- ``maildir``: writes each message durably into one Maildir the way a careful aiosmtpd handler
  would: write ``tmp/NAME``, fsync the file, rename it to ``new/NAME``, fsync ``new/``. The
  handler blocks the event loop while it does so, as such handlers usually do.

It prints ``ready <port>`` once listening and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

HOSTNAME = "aiosmtpd.bench.test"


class DiscardHandler:
    def __init__(self, recipients: set[str]) -> None:
        self.recipients = recipients

    async def handle_RCPT(  # aiosmtpd finds hooks by name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() not in self.recipients:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: discarded"


class MaildirHandler(DiscardHandler):
    def __init__(self, recipients: set[str], maildir: Path) -> None:
        super().__init__(recipients)
        self.tmp = maildir / "tmp"
        self.new = maildir / "new"
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.new_fd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        self.counter = itertools.count()
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(self.counter)}.{self.host}"
        content: bytes = envelope.content  # bytes: decode_data is off
        header = f"Return-Path: <{envelope.mail_from}>\r\n".encode()
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, header + content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(self.tmp / name, self.new / name)
        os.fsync(self.new_fd)
        return "250 2.0.0 Ok: stored"


async def serve(args: argparse.Namespace) -> None:
    recipients = {r.lower() for r in args.recipient}
    handler: DiscardHandler = (
        MaildirHandler(recipients, args.maildir)
        if args.mode == "maildir"
        else DiscardHandler(recipients)
    )
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        # hostname given: aiosmtpd would otherwise call socket.getfqdn() for every session.
        return SMTP(handler, hostname=HOSTNAME, loop=loop)

    server = await loop.create_server(factory, args.host, args.port, backlog=1024)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("discard", "maildir"), required=True)
    parser.add_argument("--maildir", type=Path, help="the Maildir for --mode maildir")
    parser.add_argument("--recipient", action="append", default=[], help="accepted address")
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=None)
    args = parser.parse_args()
    if args.mode == "maildir" and args.maildir is None:
        parser.error("--mode maildir needs --maildir")
    use_uvloop = args.uvloop if args.uvloop is not None else args.mode == "discard"
    if use_uvloop:
        import uvloop  # noqa: PLC0415 (only in the variant that asks for it)

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
