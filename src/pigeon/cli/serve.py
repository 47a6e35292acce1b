"""``pigeon serve``: run the server, from a TOML file, flags, or neither."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pigeon import build
from pigeon.config import (
    Config,
    ConfigError,
    DomainConfig,
    check_hostname,
    check_listen,
    check_network,
    check_resolvers,
    check_tls,
    load_config,
)
from pigeon.directory import Directory
from pigeon.log import configure_logging
from pigeon.policy import AnvilError
from pigeon.queue.spool import SpoolError
from pigeon.server import Server
from pigeon.server.loop import settle_collector, use_uvloop
from pigeon.server.supervisor import Supervisor
from pigeon.server.tls import build_context

__all__ = ["build_config", "register"]

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="run the SMTP server",
        description="Run the SMTP server. With no configuration it listens on 127.0.0.1:2525 "
        "and delivers mail for any user at localhost into ./pigeon-data/mail.",
    )
    parser.add_argument("-c", "--config", type=Path, help="TOML configuration file")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on, with STARTTLS when there is a certificate (repeatable; "
        "--listen and --listen-tls replace the file's listeners)",
    )
    parser.add_argument(
        "--listen-tls",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on with implicit TLS, as on port 465 (repeatable; needs "
        "--tls-cert or tls.certificate)",
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help="PEM certificate chain (and the key, unless --tls-key); enables STARTTLS",
    )
    parser.add_argument("--tls-key", type=Path, metavar="PATH", help="PEM private key")
    parser.add_argument("--hostname", help="this server's name in the greeting and headers")
    parser.add_argument(
        "--domain", action="append", metavar="DOMAIN", help="serve this domain (repeatable)"
    )
    parser.add_argument(
        "--user",
        action="append",
        metavar="NAME",
        help="a user of every --domain (repeatable); others do not exist unless --catch-all",
    )
    parser.add_argument(
        "--catch-all", action="store_true", help="any local part of each --domain is a user"
    )
    parser.add_argument("--data-dir", type=Path, help="where the spool and the mailboxes live")
    parser.add_argument(
        "--trust",
        action="append",
        metavar="CIDR",
        help="relay for clients in this network (repeatable; default: nobody)",
    )
    parser.add_argument(
        "--compat",
        choices=("rfc5321", "rfc821"),
        help="rfc821 accepts bare HELO, comments in paths and paths without <>",
    )
    parser.add_argument(
        "--resolver",
        action="append",
        metavar="HOST:PORT",
        help="DNS server for reverse lookups (repeatable; default: no lookups)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes sharing the listening ports (default: one per core)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    parser.set_defaults(run=run)


def build_config(args: argparse.Namespace) -> Config:
    """The file's settings (or the defaults), with the flags given on top."""
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    if args.hostname is not None:
        overrides["hostname"] = check_hostname(args.hostname, "--hostname")
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.listen or args.listen_tls:
        for address in args.listen or ():
            check_listen(address, "--listen")
        for address in args.listen_tls or ():
            check_listen(address, "--listen-tls")
        # The first listener of the file (or the default) gives the rest of the settings.
        base = config.listen[0]
        overrides["listen"] = tuple(
            [replace(base, address=a, tls="auto") for a in args.listen or ()]
            + [replace(base, address=a, tls="implicit") for a in args.listen_tls or ()]
        )
    if args.compat:
        listeners = overrides.get("listen", config.listen)
        overrides["listen"] = tuple(replace(lc, compat=args.compat) for lc in listeners)
    if args.tls_cert is not None:
        # A new certificate comes with its own key: --tls-key, or in the same file.
        overrides["tls"] = replace(config.tls, certificate=args.tls_cert, key=args.tls_key)
    elif args.tls_key is not None:
        if config.tls.certificate is None:
            raise ConfigError("--tls-key: give --tls-cert (or tls.certificate) too")
        overrides["tls"] = replace(config.tls, key=args.tls_key)
    if args.listen_tls and overrides.get("tls", config.tls).certificate is None:
        raise ConfigError("--listen-tls: implicit TLS needs a certificate; give --tls-cert")
    if args.domain:
        users = tuple(args.user or ())
        overrides["domains"] = {
            d.lower(): DomainConfig(users=users, catch_all=args.catch_all) for d in args.domain
        }
    elif args.user or args.catch_all:
        raise ConfigError("--user and --catch-all apply to --domain; name the domain too")
    if args.trust:
        overrides["trusted_networks"] = tuple(check_network(n, "--trust") for n in args.trust)
    if args.resolver:
        overrides["resolver"] = check_resolvers(tuple(args.resolver), "--resolver")
    return check_tls(config.with_overrides(**overrides))


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        if config.tls.certificate is not None:
            build_context(config.tls)  # a missing or broken certificate stops us here
    except ConfigError as error:
        print(f"pigeon serve: {error}", file=sys.stderr)
        return EXIT_CONFIG
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        print("pigeon serve: --workers must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(level)
    try:
        if workers == 1:
            use_uvloop()
            asyncio.run(_serve(config))
            return 0
        return _supervise(config, workers, level)
    except ConfigError as error:  # the certificate changed between the check and the start
        print(f"pigeon serve: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, AnvilError, SpoolError) as error:  # another server on this data_dir, say
        print(f"pigeon serve: cannot start: {error}", file=sys.stderr)
        return 71  # EX_OSERR
    except KeyboardInterrupt:
        return 0


async def _serve(config: Config) -> None:
    server = Server(config)
    server.handle_signals()
    settle_collector()
    await server.start()
    _banner(config, server.addresses, server.tls_modes, workers=1)
    if server.recovered:
        print(f"pigeon: {server.recovered} message(s) recovered from the spool", flush=True)
    await server.run_until_signalled()


def _supervise(config: Config, workers: int, level: int) -> int:
    supervisor = Supervisor(config, workers, log_level=level)
    supervisor.start(supervisor.bind())
    modes = [config.listener_tls(listener) for listener in config.listen]
    _banner(config, supervisor.addresses, modes, workers=workers)
    return supervisor.run()


_TLS_SHOWN = {"none": "", "starttls": " (STARTTLS)", "implicit": " (implicit TLS)"}


def _banner(
    config: Config,
    addresses: Sequence[tuple[str, int]],
    tls_modes: Sequence[str],
    *,
    workers: int,
) -> None:
    """What a person starting the server wants to know: where it listens, where mail goes."""
    for (host, port), tls in zip(addresses, tls_modes, strict=True):
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        print(f"pigeon: listening on {shown}{_TLS_SHOWN[tls]}", flush=True)
    if config.tls.certificate is not None:
        print(f"pigeon: TLS certificate {config.tls.certificate}", flush=True)
    directory = Directory.from_config(config)
    for line in directory.describe():
        print(f"pigeon: mail for {line}", flush=True)
    processes = "1 process" if workers == 1 else f"{workers} worker processes"
    print(f"pigeon: {processes}, {build.describe()}; spool in {config.spool_dir}", flush=True)
