"""What ``pigeon send`` and ``pigeon sendmail`` share: server options and reporting."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import dns.asyncresolver

from pigeon.client import DsnRequest, SendError, SendResult, TLSMode, send_async
from pigeon.config import ConfigError, parse_host_port

from . import _exit

__all__ = [
    "ServerOptions",
    "add_server_options",
    "print_results",
    "server_options",
    "submit",
]

DEFAULT_SERVER = "localhost:25"


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str
    port: int | None
    tls: TLSMode
    ssl_context: ssl.SSLContext | None
    verify: bool
    username: str | None
    password: str | None
    allow_plaintext_auth: bool
    timeout: float
    helo: str | None


def add_server_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        help=f"submit to this server (default: $PIGEON_SMTP_SERVER or {DEFAULT_SERVER})",
    )
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const="implicit",
        help="implicit TLS from the first byte (port 465)",
    )
    mode.add_argument(
        "--starttls", dest="tls", action="store_const", const="starttls", help="require STARTTLS"
    )
    mode.add_argument(
        "--no-tls", dest="tls", action="store_const", const="off", help="never use TLS"
    )
    group.add_argument("--cafile", type=Path, help="trust this CA certificate (PEM)")
    group.add_argument(
        "--no-verify",
        action="store_true",
        help="accept a TLS certificate that fails verification (unsafe)",
    )
    group.add_argument(
        "--user", help="authenticate as this user (AUTH SCRAM-SHA-256, PLAIN or LOGIN)"
    )
    group.add_argument(
        "--password-file", type=Path, help="read the password from this file (first line)"
    )
    group.add_argument(
        "--insecure-auth",
        action="store_true",
        help="allow AUTH without TLS to a host that is not loopback",
    )
    group.add_argument("--helo", help="name to give in EHLO (default: this host's name)")
    group.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait at each step (default 60)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the SMTP conversation ('>' sent, '<' received) on stderr",
    )


def server_options(args: argparse.Namespace, default: str | None = None) -> ServerOptions:
    """Raises ConfigError (a usage error) with a message naming the option."""
    text = args.server or os.environ.get("PIGEON_SMTP_SERVER") or default or DEFAULT_SERVER
    tls: TLSMode = args.tls or "opportunistic"
    host, port = parse_host_port(text, default_port=465 if tls == "implicit" else 25)
    if ":" not in text.rsplit("]", 1)[-1]:
        port = 465 if tls == "implicit" else 25
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as error:
            raise ConfigError(
                f"--password-file {args.password_file}: cannot read a password ({error})"
            ) from None
    if password is not None and args.user is None:
        raise ConfigError("--password-file needs --user")
    if args.user is not None and password is None:
        raise ConfigError("--user needs --password-file")
    context = None
    if args.cafile is not None:
        try:
            context = ssl.create_default_context(cafile=str(args.cafile))
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(f"--cafile {args.cafile}: {error}") from None
    return ServerOptions(
        host=host,
        port=port,
        tls=tls,
        ssl_context=context,
        verify=not args.no_verify,
        username=args.user,
        password=password,
        allow_plaintext_auth=args.insecure_auth,
        timeout=args.timeout,
        helo=args.helo,
    )


def add_dsn_options(parser: argparse.ArgumentParser, *, sendmail: bool = False) -> None:
    """Delivery status notifications (RFC 3461), by sendmail's letters or by name."""
    notify, ret, envid = ("-N", "-R", "-V") if sendmail else ("--notify", "--ret", "--envid")
    parser.add_argument(
        notify,
        dest="dsn_notify",
        metavar="EVENTS",
        help="when to be told: never, or success,failure,delay (default: the server's, "
        "usually failure,delay)",
    )
    parser.add_argument(
        ret, dest="dsn_ret", metavar="full|hdrs", help="return the whole message or its header"
    )
    parser.add_argument(envid, dest="dsn_envid", metavar="ID", help="your id for this message")


def dsn_request(args: argparse.Namespace) -> DsnRequest | None:
    """From the options of add_dsn_options; raises ValueError naming a bad value."""
    if args.dsn_notify is None and args.dsn_ret is None and args.dsn_envid is None:
        return None
    return DsnRequest.parse(args.dsn_notify, args.dsn_ret, args.dsn_envid)


def print_transcript(direction: str, line: str) -> None:
    print(f"{direction}{line}", file=sys.stderr)


def print_results(result: SendResult, *, verbose: bool) -> None:
    """One line per recipient that was refused (and, with -v, per accepted one too)."""
    for recipient in result.recipients:
        if verbose or not recipient.accepted:
            stream = sys.stdout if recipient.accepted else sys.stderr
            print(recipient.describe(), file=stream)


def submit(
    program: str,
    message: EmailMessage | bytes,
    options: ServerOptions,
    *,
    sender: str,
    verbose: bool,
    recipients: Sequence[str] | None = None,
    port: int | None = None,
    mx: bool = False,
    resolver: dns.asyncresolver.Resolver | None = None,
    chunking: bool = False,
    dsn: DsnRequest | None = None,
) -> int:
    """Send and report, per recipient; the exit status says how it went (sysexits.h)."""
    try:
        result = asyncio.run(
            send_async(
                message,
                sender=sender,
                recipients=recipients,
                server=options.host,
                port=options.port if port is None else port,
                mx=mx,
                resolver=resolver,
                tls=options.tls,
                ssl_context=options.ssl_context,
                verify=options.verify,
                username=options.username,
                password=options.password,
                allow_plaintext_auth=options.allow_plaintext_auth,
                local_hostname=options.helo,
                timeout=options.timeout,
                chunking=chunking,
                dsn=dsn,
                transcript=print_transcript if verbose else None,
            )
        )
    except ValueError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return _exit.USAGE
    except SendError as error:
        print(f"{program}: {error}", file=sys.stderr)
        return _exit.TEMPORARY if error.temporary else _exit.UNAVAILABLE
    print_results(result, verbose=verbose)
    return _exit.for_result(result)
