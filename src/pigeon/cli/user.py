"""``pigeon user``: the users who may authenticate (AUTH), in ``<data_dir>/users.db``.

    pigeon user add alice@example.test               # asks for the password twice
    printf '%s\\n' "$PASSWORD" | pigeon user add alice@example.test --password-stdin
    pigeon user passwd alice@example.test
    pigeon user del alice@example.test
    pigeon user list [--json]

A running server sees each change at once. A user whose domain the server serves also has
a mailbox there (``<data_dir>/mail/<domain>/<user>/``), like a user named in the config.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime
from typing import Any

from pigeon.auth import UserExists, UserStore, UserStoreError, normalize_address
from pigeon.config import Config, ConfigError

from . import _exit, directory
from ._config import add_action, load_command_config

__all__ = ["register"]


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "user",
        help="manage the users who may authenticate (AUTH)",
        description="Manage the users who may authenticate (SMTP AUTH) in "
        "<data_dir>/users.db. Passwords are stored only as an scrypt hash and as "
        "SCRAM-SHA-256 keys. A running server sees changes at once.",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        return add_action(actions, name, help_text)

    add = action("add", "add a user, who may then authenticate and send")
    add.add_argument("address", help="the user's mail address, also their login name")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (else it is asked for)",
    )
    add.set_defaults(run=_add)
    passwd = action("passwd", "set a user's password")
    passwd.add_argument("address")
    passwd.add_argument("--password-stdin", action="store_true", help="as for add")
    passwd.set_defaults(run=_passwd)
    delete = action("del", "delete a user (their mailbox stays)")
    delete.add_argument("address")
    delete.set_defaults(run=_delete)
    listing = action("list", "list the users")
    listing.add_argument("--json", action="store_true", help="as a JSON array of objects")
    listing.set_defaults(run=_list)
    # Where their mail goes (full name, quota, forward, ...): the directory's side of a user.
    directory.add_user_actions(action)


def _config(args: argparse.Namespace) -> Config:
    return load_command_config(args)


def _open(config: Config) -> UserStore:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return UserStore(config.users_db)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise UserStoreError("the passwords differ")
    return first


def _add(args: argparse.Namespace) -> int:
    return _change(args, "added")


def _passwd(args: argparse.Namespace) -> int:
    return _change(args, "password changed for")


def _change(args: argparse.Namespace, done: str) -> int:
    try:
        config = _config(args)
        address = normalize_address(args.address)  # before asking for a password
        store = _open(config)
        try:
            # Checked before the password is asked for, and again by the write itself.
            exists = store.exists(address)
            if args.action == "add":
                if exists:
                    raise UserExists(f"{address} exists already")
                store.add(address, _password(args))
            else:
                if not exists:
                    raise UserStoreError(f"no such user: {address}")
                store.set_password(address, _password(args))
        finally:
            store.close()
    except UserExists as error:
        return _fail(str(error), _exit.CANT_CREATE)
    except (ConfigError, UserStoreError, OSError) as error:
        return _fail(str(error), _exit.CONFIG if isinstance(error, ConfigError) else _exit.USAGE)
    print(f"pigeon user: {done} {address}")
    domain = address.rpartition("@")[2]
    if args.action == "add" and domain not in config.domains:
        print(
            f"pigeon user: note: {domain} is not a domain this server serves; {address} can"
            " authenticate and send, but receives no mail here",
            file=sys.stderr,
        )
    return _exit.OK


def _delete(args: argparse.Namespace) -> int:
    try:
        store = _open(_config(args))
        try:
            address = store.delete(args.address)
        finally:
            store.close()
    except ConfigError as error:
        return _fail(str(error), _exit.CONFIG)
    except (UserStoreError, OSError) as error:
        return _fail(str(error), _exit.USAGE)
    print(f"pigeon user: deleted {address} (the mailbox, if any, is left as it is)")
    return _exit.OK


def _list(args: argparse.Namespace) -> int:
    try:
        store = _open(_config(args))
        try:
            users = store.list()
        finally:
            store.close()
    except ConfigError as error:
        return _fail(str(error), _exit.CONFIG)
    except OSError as error:
        return _fail(str(error), _exit.OS_ERROR)
    if args.json:
        rows = [
            {"address": u.address, "created": _iso(u.created), "changed": _iso(u.changed)}
            for u in users
        ]
        print(json.dumps(rows, indent=2))
    else:
        for user in users:
            print(user.address)
    return _exit.OK


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def _fail(message: str, status: int) -> int:
    print(f"pigeon user: {message}", file=sys.stderr)
    return status
