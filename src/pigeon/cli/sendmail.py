"""``pigeon sendmail``: the interface every Unix program uses to send mail.

    pigeon sendmail [-t] [-i | -oi] [-f sender] [-F name] [recipient ...] < message

It reads a message on standard input and submits it. Where it goes: ``--server``, or
``$PIGEON_SMTP_SERVER``, or the first listener of the local Pigeon named by ``-C FILE`` or
``$PIGEON_CONFIG``, or localhost port 25. It fills in From, Date and Message-ID when the
message lacks them, as Postfix's cleanup does, and never sends a Bcc header on.

Installed also as ``sendmail``, so programs that run ``sendmail -t -i`` find it.
"""

from __future__ import annotations

import argparse
import email.utils
import getpass
import os
import socket
import sys
from collections.abc import Sequence
from email.parser import BytesParser
from email.policy import SMTP
from pathlib import Path

from pigeon.client import envelope_recipients
from pigeon.config import ConfigError, load_config

from . import _exit
from ._sending import add_dsn_options, add_server_options, dsn_request, server_options, submit

__all__ = ["main", "register"]

DESCRIPTION = (
    "Read a message on standard input and send it, like sendmail. Exit status: 0 when "
    "every recipient was accepted, 75 for temporary failures, 69 for permanent ones."
)


def register(commands: object) -> None:
    parser = commands.add_parser(  # type: ignore[attr-defined]
        "sendmail", help="sendmail-compatible submission", description=DESCRIPTION
    )
    _arguments(parser)
    parser.set_defaults(run=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sendmail`` console script."""
    parser = argparse.ArgumentParser(prog="sendmail", description=DESCRIPTION)
    _arguments(parser)
    args = parser.parse_args(_normalise(list(sys.argv[1:] if argv is None else argv)))
    return run(args)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-t",
        dest="from_headers",
        action="store_true",
        help="take recipients from To, Cc and Bcc (added to those given)",
    )
    parser.add_argument(
        "-i",
        dest="ignore_dots",
        action="store_true",
        help="a line with a single '.' does not end the message (also -oi)",
    )
    parser.add_argument("-f", dest="sender", help="envelope sender (default: you@this-host)")
    parser.add_argument("-F", dest="full_name", help="full name for a From header it adds")
    parser.add_argument(
        "-C", dest="config", type=Path, help="configuration of the local Pigeon to submit to"
    )
    parser.add_argument(
        "-o", dest="options", action="append", default=[], help=argparse.SUPPRESS
    )  # sendmail's -oXXX options, accepted
    parser.add_argument("recipients", nargs="*", help="recipient addresses")
    add_dsn_options(parser, sendmail=True)
    add_server_options(parser)


def _normalise(argv: list[str]) -> list[str]:
    """Old sendmail spellings: -oi means -i; other -oX and -bm are accepted and ignored."""
    out = []
    for arg in argv:
        if arg == "-oi":
            out.append("-i")
        elif arg in ("-bm", "-odi", "-odb", "-oem", "-oep", "-om"):
            continue
        else:
            out.append(arg)
    return out


def run(args: argparse.Namespace) -> int:
    try:
        default = _local_server(args.config)
        options = server_options(args, default=default)
    except ConfigError as error:
        print(f"sendmail: {error}", file=sys.stderr)
        return _exit.USAGE
    # "-oi" reaches here as -o with value "i" when run as `pigeon sendmail`.
    ignore_dots = args.ignore_dots or "i" in args.options
    raw = _read_message(sys.stdin.buffer, stop_at_dot=not ignore_dots)
    message = BytesParser(policy=SMTP).parsebytes(raw)
    if args.sender is None:
        sender = f"{getpass.getuser()}@{socket.getfqdn()}"
    else:
        # -f '' and -f '<>' mean the null sender, as in Postfix (for bounces and autoreplies).
        sender = args.sender.strip().removeprefix("<").removesuffix(">")
    recipients = list(args.recipients)
    if args.from_headers:
        try:
            found = envelope_recipients(message)
        except ValueError as error:
            print(f"sendmail: {error}", file=sys.stderr)
            return _exit.DATA_ERROR
        recipients += [r for r in found if r not in recipients]
    if not recipients:
        print(
            "sendmail: no recipients (give addresses, or -t to read them from the headers)",
            file=sys.stderr,
        )
        return _exit.USAGE
    if "From" not in message:
        message["From"] = email.utils.formataddr((args.full_name or "", sender))
    if "Date" not in message:
        message["Date"] = email.utils.formatdate(localtime=True)
    if "Message-ID" not in message:
        message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    del message["Bcc"]
    try:
        dsn = dsn_request(args)
    except ValueError as error:
        print(f"sendmail: {error}", file=sys.stderr)
        return _exit.USAGE
    return submit(
        "sendmail",
        message.as_bytes(policy=SMTP),
        options,
        sender=sender,
        recipients=recipients,
        verbose=args.verbose,
        dsn=dsn,
    )


def _local_server(config_path: Path | None) -> str | None:
    """The address of the local Pigeon's first listener, when its configuration is named."""
    path = config_path or (
        Path(os.environ["PIGEON_CONFIG"]) if "PIGEON_CONFIG" in os.environ else None
    )
    if path is None:
        return None
    config = load_config(path)
    host, port = config.listen[0].host_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read_message(stream: object, *, stop_at_dot: bool) -> bytes:
    """Standard input up to its end, or (sendmail's default) up to a line holding only '.'."""
    lines = []
    for line in stream:  # type: ignore[attr-defined]
        if stop_at_dot and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)
