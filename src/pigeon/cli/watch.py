"""``pigeon watch USER``: a terminal for SEND, SOML and SAML (RFC 821 section 3.5).

    pigeon watch alice@example.test -c pigeon.toml          # asks for alice's password
    pigeon watch alice@example.test --password-file ~/.pigeon-password

It authenticates as USER against the user store (``<data_dir>/users.db``), registers a
terminal (``pigeon.delivery.terminal``) and prints each message sent to it, until Ctrl-C.
While it runs, USER is "logged on": SEND reaches them, SOML shows here instead of filing in
the mailbox, SAML does both. Several watches of one user each get every message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import signal
import sys
from pathlib import Path
from typing import Any

from pigeon.auth import UserStore
from pigeon.config import Config, ConfigError
from pigeon.delivery.terminal import TerminalMessage, open_terminal

from . import _exit
from ._config import add_config_options, load_command_config

__all__ = ["format_message", "register"]


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "watch",
        help="be a user's terminal: print SEND, SOML and SAML messages as they arrive",
        description="Authenticate as USER and print each message sent to USER's terminal "
        "(SMTP SEND, SOML, SAML) as it arrives, until interrupted.",
    )
    parser.add_argument("user", help="the user's address, their login name")
    add_config_options(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--password-file", type=Path, help="read the password from this file (first line)"
    )
    source.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    parser.set_defaults(run=_run)


def _config(args: argparse.Namespace) -> Config:
    return load_command_config(args)


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            text: str = args.password_file.read_text(encoding="utf-8")
            return text.splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as error:
            raise ConfigError(
                f"--password-file {args.password_file}: cannot read a password ({error})"
            ) from None
    if args.password_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    return getpass.getpass(f"Password for {args.user}: ")


def format_message(message: TerminalMessage) -> str:
    """How a terminal message is printed: who, when, what, then the text."""
    lines = [
        f"--- message from <{message.sender}> to <{message.recipient}>",
        f"Date: {message.date}",
        f"Subject: {message.subject}",
        "",
        message.text.rstrip("\n"),
    ]
    if message.truncated:
        lines.append("[the message is longer; the rest is not shown]")
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        password = _password(args)
    except ConfigError as error:
        print(f"pigeon watch: {error}", file=sys.stderr)
        return _exit.USAGE if "--password" in str(error) else _exit.CONFIG
    if not config.users_db.exists():
        print(f"pigeon watch: no users in {config.users_db}", file=sys.stderr)
        return _exit.NO_USER
    store = UserStore(config.users_db)
    try:
        user = store.check_password(args.user, password)
    finally:
        store.close()
    if user is None:
        print(f"pigeon watch: wrong user name or password for {args.user}", file=sys.stderr)
        return _exit.NO_PERMISSION
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(config.data_dir, user))
    return _exit.OK


async def _watch(data_dir: Path, user: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def show(message: TerminalMessage) -> None:
        sys.stdout.write(format_message(message))
        sys.stdout.flush()

    try:
        async with open_terminal(data_dir, user, show):
            print(f"pigeon watch: {user} is logged on; Ctrl-C to stop", flush=True)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
