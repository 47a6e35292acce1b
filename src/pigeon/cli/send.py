"""``pigeon send``: compose a message from flags and send it, like swaks or mail(1)."""

from __future__ import annotations

import argparse
import sys
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from pigeon.client import Attachment, compose
from pigeon.config import ConfigError
from pigeon.dns import make_resolver

from . import _exit
from ._sending import add_dsn_options, add_server_options, dsn_request, server_options, submit

__all__ = ["register"]


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "send",
        help="compose and send a message",
        description="Compose a message and send it to a server, or straight to the "
        "recipients' mail exchangers with --mx. Exit status: 0 when every recipient was "
        "accepted, 75 when only temporary failures remain, 69 when any was refused for good.",
    )
    parser.add_argument("--from", dest="sender", required=True, help="sender address")
    parser.add_argument("--to", action="append", default=[], help="recipient (repeatable)")
    parser.add_argument("--cc", action="append", default=[], help="copy to (repeatable)")
    parser.add_argument("--bcc", action="append", default=[], help="blind copy (repeatable)")
    parser.add_argument("--reply-to", help="Reply-To address")
    parser.add_argument("--subject", default="", help="subject line")
    body = parser.add_mutually_exclusive_group()
    body.add_argument("--body", help="message text (default: read standard input)")
    body.add_argument("--body-file", type=Path, help="read the message text from a file")
    parser.add_argument("--html", type=Path, help="an HTML alternative, from a file")
    parser.add_argument(
        "--attach", type=Path, action="append", default=[], help="attach a file (repeatable)"
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="an extra header (repeatable)",
    )
    parser.add_argument(
        "--mx",
        action="store_true",
        help="deliver to each recipient domain's mail exchangers (port 25)",
    )
    parser.add_argument(
        "--resolver",
        action="append",
        metavar="HOST:PORT",
        help="DNS server for --mx (default: the system's)",
    )
    parser.add_argument("--mx-port", type=int, default=25, help=argparse.SUPPRESS)
    parser.add_argument(
        "--chunking",
        action="store_true",
        help="send with BDAT (RFC 3030) when the server offers CHUNKING",
    )
    add_dsn_options(parser)
    add_server_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not (args.to or args.cc or args.bcc):
        return _usage("no recipients: give --to, --cc or --bcc")
    try:
        options = server_options(args)
        text = _body(args)
        html = args.html.read_text() if args.html else None
        attachments = [Attachment.from_path(path) for path in args.attach]
        headers = dict(_header(h) for h in args.header)
        dsn = dsn_request(args)
        message = compose(
            sender=args.sender,
            to=args.to,
            cc=args.cc,
            bcc=args.bcc,
            reply_to=args.reply_to,
            subject=args.subject,
            text=text,
            html=html,
            attachments=attachments,
            headers=headers,
        )
    except ConfigError as error:
        return _usage(str(error))
    except OSError as error:
        print(f"pigeon send: {error.filename}: {error.strerror}", file=sys.stderr)
        return _exit.NO_INPUT
    except ValueError as error:
        return _usage(str(error))
    try:
        resolver = make_resolver(tuple(args.resolver)) if args.resolver else None
    except ValueError as error:
        return _usage(f"--resolver: {error}")
    return submit(
        "pigeon send",
        message,
        options,
        sender=_address(args.sender),
        verbose=args.verbose,
        port=args.mx_port if args.mx else None,
        mx=args.mx,
        resolver=resolver,
        chunking=args.chunking,
        dsn=dsn,
    )


def _body(args: argparse.Namespace) -> str:
    if args.body is not None:
        return str(args.body)
    if args.body_file is not None:
        return str(args.body_file.read_text())
    if sys.stdin is None or sys.stdin.isatty():
        return ""
    return sys.stdin.read()


def _header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip() or " " in name.strip():
        raise ValueError(f"--header {text!r}: expected NAME:VALUE")
    return name.strip(), value.strip()


def _address(text: str) -> str:
    """The address in "Name <addr>" or a bare address."""
    return parseaddr(text)[1] or text


def _usage(message: str) -> int:
    print(f"pigeon send: {message}", file=sys.stderr)
    return _exit.USAGE
