"""``pigeon tls``: certificates for the server. ``pigeon tls selfsigned`` makes one to develop
and test with; a server on the Internet wants one from a CA (ACME, e.g. Let's Encrypt)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path
from typing import Any

from pigeon.server.tls import self_signed
from pigeon.smtp._abnf import DOMAIN_RE

from . import _exit

__all__ = ["register"]

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
CANT_CREATE = 73  # EX_CANTCREAT from sysexits.h


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "tls",
        help="TLS certificates for the server",
        description="TLS certificates for the server. `pigeon tls selfsigned` makes one to "
        "develop and test with; a server on the Internet wants one from a CA.",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    selfsigned = actions.add_parser(
        "selfsigned",
        help="write a self-signed certificate and key for development",
        description="Write a self-signed certificate (RSA 2048, SHA-256) and its unencrypted "
        "key (mode 0600) for development and tests, then use them with "
        "`pigeon serve --tls-cert CERT --tls-key KEY`. Clients must be told to trust it "
        "(swaks --tls-ca-path CERT, or a CA file); mail servers on the Internet will not.",
    )
    selfsigned.add_argument(
        "--hostname",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address the certificate is for (repeatable; the first is "
        f"also its common name; default: {', '.join(DEFAULT_NAMES)})",
    )
    selfsigned.add_argument(
        "--out-cert",
        type=Path,
        default=Path("pigeon-cert.pem"),
        metavar="PATH",
        help="where to write the certificate (default: pigeon-cert.pem)",
    )
    selfsigned.add_argument(
        "--out-key",
        type=Path,
        default=Path("pigeon-key.pem"),
        metavar="PATH",
        help="where to write the private key, mode 0600 (default: pigeon-key.pem)",
    )
    selfsigned.add_argument(
        "--days", type=int, default=365, metavar="N", help="days of validity (default: 365)"
    )
    selfsigned.add_argument(
        "--force", action="store_true", help="overwrite the files if they exist"
    )
    selfsigned.set_defaults(run=_selfsigned)


def _selfsigned(args: argparse.Namespace) -> int:
    names: list[str] = args.hostname or list(DEFAULT_NAMES)
    for name in names:
        if not _valid_name(name):
            return _fail(f"--hostname: {name!r} is not a DNS name or an IP address", _exit.USAGE)
    if args.days < 1:
        return _fail("--days: must be at least 1", _exit.USAGE)
    cert_path: Path = args.out_cert
    key_path: Path = args.out_key
    if cert_path.resolve() == key_path.resolve():
        return _fail("--out-cert and --out-key must be different files", _exit.USAGE)
    if not args.force:
        for flag, path in (("--out-cert", cert_path), ("--out-key", key_path)):
            if path.exists():
                return _fail(f"{flag}: {path} exists; use --force to replace it", CANT_CREATE)
    certificate, key = self_signed(names, days=args.days)
    try:
        _write(key_path, key, mode=0o600)
        _write(cert_path, certificate, mode=0o644)
    except OSError as error:
        return _fail(f"cannot write: {error}", CANT_CREATE)
    print(f"pigeon tls: wrote {cert_path} (for {', '.join(names)}; {args.days} days)")
    print(f"pigeon tls: wrote {key_path} (mode 0600)")
    print(f"pigeon tls: use with: pigeon serve --tls-cert {cert_path} --tls-key {key_path}")
    return _exit.OK


def _valid_name(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        bare = name.removeprefix("*.")  # a wildcard, for a whole domain's hosts
        return bool(DOMAIN_RE.fullmatch(bare)) and len(name) <= 253
    return True


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the start: a key is never readable by
    others, not even for a moment, and an existing file gets the mode too (--force)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)
        file.write(data)


def _fail(message: str, status: int) -> int:
    print(f"pigeon tls: {message}", file=sys.stderr)
    return status
