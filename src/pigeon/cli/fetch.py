"""``pigeon fetch``: the customer's side of on-demand mail relay (RFC 2645).

    pigeon fetch --atrn customer.test --server provider.example:366 --starttls \\
        --user cust@provider.example --password-file ~/.odmr-password -c pigeon.toml

It connects to the provider, authenticates, sends ATRN (or TURN with ``--turn``), and after
250 is the SMTP *server* on that same connection: the provider delivers the held mail to
it. What it receives goes through the local Pigeon's own server path (``pigeon.server``
sessions, policies and spool, with 250 only after the fsync), built from ``-c FILE``, and is
delivered by its scheduler before the command ends. It runs as its own spool worker
("fetch"), beside a ``pigeon serve`` of the same data directory if one runs; mail it could
not deliver at once stays in that spool, and ``pigeon serve`` takes it over at its next start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import Any

from pigeon.client import AuthError, SendError, SMTPClient
from pigeon.config import Config, ConfigError
from pigeon.queue.spool import SpoolError
from pigeon.server import Server
from pigeon.server.context import Listener
from pigeon.server.session import Session

from . import _exit
from ._config import add_config_options, load_command_config
from ._sending import ServerOptions, add_server_options, print_transcript, server_options

__all__ = ["register"]

_IDLE_TIMEOUT = 300.0  # seconds to let the local scheduler deliver what was received


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "fetch",
        help="fetch held mail from a provider with ATRN or TURN (on-demand relay)",
        description="Connect to a provider, authenticate, send ATRN (RFC 2645) or TURN, and "
        "receive the mail it holds for your domains into the local Pigeon.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--atrn", action="store_true", help="ask with ATRN for DOMAIN... (the default)"
    )
    mode.add_argument("--turn", action="store_true", help="ask with TURN (all your domains)")
    parser.add_argument(
        "domains", nargs="*", metavar="DOMAIN", help="domains to fetch (default: all yours)"
    )
    add_config_options(parser, whose="the local Pigeon's")
    add_server_options(parser)
    parser.set_defaults(run=_run)


def _local_config(args: argparse.Namespace) -> Config:
    config = load_command_config(args)
    # One loopback listener on a port of the kernel's choosing: the sessions of this command
    # come over the provider's connection, never through a listening socket of its own.
    listener = replace(config.listen[0], address="127.0.0.1:0", tls="none", role="mx")
    return replace(config, listen=(listener,), web=replace(config.web, enabled=False))


def _run(args: argparse.Namespace) -> int:
    if args.turn and args.domains:
        print("pigeon fetch: TURN names no domains; use --atrn DOMAIN", file=sys.stderr)
        return _exit.USAGE
    try:
        config = _local_config(args)
        options = server_options(args)
    except ConfigError as error:
        print(f"pigeon fetch: {error}", file=sys.stderr)
        return _exit.USAGE if str(error).startswith("--") else _exit.CONFIG
    if options.username is None:
        print(
            "pigeon fetch: --user and --password-file are needed (ATRN needs AUTH)", file=sys.stderr
        )
        return _exit.USAGE
    command = "TURN" if args.turn else " ".join(["ATRN", ",".join(args.domains)]).strip()
    try:
        return asyncio.run(_fetch(config, options, command, verbose=args.verbose))
    except (ConfigError, SpoolError) as error:
        print(f"pigeon fetch: {error}", file=sys.stderr)
        return _exit.CONFIG if isinstance(error, ConfigError) else _exit.TEMPORARY


async def _fetch(config: Config, options: ServerOptions, command: str, *, verbose: bool) -> int:
    server = Server(config, worker="fetch")
    await server.start()
    try:
        return await _converse(server, options, command, verbose=verbose)
    finally:
        try:
            await asyncio.wait_for(server.context.scheduler.wait_idle(), _IDLE_TIMEOUT)
        except TimeoutError:
            print("pigeon fetch: some mail is still being delivered; it stays queued")
        await server.shutdown()


async def _converse(server: Server, options: ServerOptions, command: str, *, verbose: bool) -> int:
    client = SMTPClient(
        options.host,
        options.port or 25,
        tls=options.tls,
        ssl_context=options.ssl_context,
        verify=options.verify,
        username=options.username,
        password=options.password,
        allow_plaintext_auth=options.allow_plaintext_auth,
        local_hostname=options.helo or server.config.hostname,
        timeout=options.timeout,
        transcript=print_transcript if verbose else None,
    )
    try:
        await client.connect()
        reply = await client.command(command)
    except AuthError as error:
        print(f"pigeon fetch: {error}", file=sys.stderr)
        return _exit.TEMPORARY if error.temporary else _exit.NO_PERMISSION
    except SendError as error:
        print(f"pigeon fetch: {error}", file=sys.stderr)
        return _exit.TEMPORARY if error.temporary else _exit.UNAVAILABLE
    if reply.code == 453:  # RFC 2645: "You have no mail"
        print(f"pigeon fetch: no mail waiting ({reply})")
        await client.quit()
        return _exit.OK
    if reply.code != 250:
        print(f"pigeon fetch: {command.partition(' ')[0]} refused: {reply}", file=sys.stderr)
        await client.quit()
        return _exit.TEMPORARY if reply.code < 500 else _exit.UNAVAILABLE
    _, writer = client.detach()
    received = await _serve(server, writer.transport)
    print(f"pigeon fetch: {received} messages received")
    return _exit.OK


async def _serve(server: Server, transport: asyncio.BaseTransport) -> int:
    """Run a session of the local server over ``transport`` until the provider is done;
    returns how many messages it stored."""
    listener = Listener.build(server.context, server.config.listen[0])
    ended = asyncio.Event()
    session = Session(listener, on_lost=ended.set)
    transport.set_protocol(session)
    session.connection_made(transport)
    await ended.wait()  # the session's own command and data timeouts bound this
    conn = session._conn
    return conn.messages if conn is not None else 0
