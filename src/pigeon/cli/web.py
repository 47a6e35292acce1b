"""``pigeon web token``: bearer tokens for the HTTP API, kept (hashed) in ``<data_dir>/web.db``.

    pigeon web token create alice@example.test [--name ci]   # prints the token, once
    pigeon web token list [--json]
    pigeon web token revoke ID

A token acts as its user (an administrator when the user is in ``[web] admins``) for as long
as the user exists in users.db and the token is not revoked. Only its SHA-256 is stored, so
it cannot be shown again: a lost token is revoked and replaced.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from pigeon.auth import UserStore, UserStoreError, normalize_address
from pigeon.config import Config, ConfigError
from pigeon.web.context import web_db
from pigeon.web.store import WebStore

from . import _exit
from ._config import add_action, load_command_config

__all__ = ["register"]


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "web",
        help="the web UI and HTTP API: API tokens",
        description="The web UI and HTTP API (see [web] in the configuration).",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    topics = parser.add_subparsers(dest="topic", metavar="TOPIC")
    token: argparse.ArgumentParser = topics.add_parser(
        "token",
        help="bearer tokens for the HTTP API",
        description="Bearer tokens for the HTTP API (Authorization: Bearer <token>).",
    )
    token.set_defaults(run=lambda args: _exit.show_usage(token))
    actions = token.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_action(actions, name, help_text)

    create = action("create", "make a token acting as a user of users.db; prints it once")
    create.add_argument("address", help="the user the token acts as")
    create.add_argument("--name", default="", help="what the token is for (shown by list)")
    create.set_defaults(run=_create)
    listing = action("list", "the tokens (never the tokens themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    listing.set_defaults(run=_list)
    revoke = action("revoke", "make a token useless at once")
    revoke.add_argument("id", type=int, help="the token's number, from list")
    revoke.set_defaults(run=_revoke)


def _config(args: argparse.Namespace) -> Config:
    config = load_command_config(args)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return config


def _fail(action: str, message: str, status: int) -> int:
    print(f"pigeon web token {action}: {message}", file=sys.stderr)
    return status


def _create(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        address = normalize_address(args.address)
    except (ConfigError, UserStoreError) as error:
        return _fail("create", str(error), _exit.USAGE)
    users = UserStore(config.users_db)
    try:
        if not users.exists(address):
            return _fail(
                "create", f"no such user: {address} (add one with pigeon user add)", _exit.USAGE
            )
    finally:
        users.close()
    store = WebStore(web_db(config.data_dir))
    try:
        entry, token = store.create_token(address, args.name)
    finally:
        store.close()
    print(token)
    print(
        f"token {entry.id} for {address}: send it as 'Authorization: Bearer <token>'."
        " It is not stored and cannot be shown again.",
        file=sys.stderr,
    )
    return _exit.OK


def _list(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ConfigError as error:
        return _fail("list", str(error), _exit.CONFIG)
    store = WebStore(web_db(config.data_dir))
    try:
        entries = store.tokens()
    finally:
        store.close()
    if args.json:
        rows = [
            {"id": e.id, "address": e.address, "name": e.name, "created": e.created}
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return _exit.OK
    if not entries:
        print("no tokens")
    for e in entries:
        created = datetime.fromtimestamp(e.created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"{e.id:>4}  {e.address:<32} {created}  {e.name}")
    return _exit.OK


def _revoke(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ConfigError as error:
        return _fail("revoke", str(error), _exit.CONFIG)
    store = WebStore(web_db(config.data_dir))
    try:
        revoked = store.revoke_token(args.id)
    finally:
        store.close()
    if not revoked:
        return _fail("revoke", f"no token {args.id}", _exit.NO_INPUT)
    print(f"token {args.id} revoked")
    return _exit.OK
