"""``pigeon alias``, ``pigeon list`` and ``pigeon user set|show``: the directory's entries in
``<data_dir>/directory.db``, which a running server reads at every lookup.

    pigeon alias add sales@example.test alice@example.test bob@elsewhere.test
    pigeon alias del sales@example.test [TARGET...]
    pigeon alias list [--json]
    pigeon list create team@example.test --owner alice@example.test --posting members
    pigeon list add team@example.test bob@example.test carol@elsewhere.test
    pigeon list remove team@example.test bob@example.test
    pigeon list show team@example.test [--json]
    pigeon user set alice@example.test --name "Alice Liddell" --quota 100000000
    pigeon user show alice@example.test [--json]

Entries written in the configuration file are shown too, marked as such, and are changed by
editing the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from pigeon.config import ConfigError
from pigeon.directory import DirectoryStore
from pigeon.directory.admin import (
    DirectoryAdmin,
    DirectoryAdminError,
    ListEntry,
    Problem,
    describe_route,
)
from pigeon.queue.control import announce

from . import _exit
from ._config import add_config_options, config_path, load_command_config

__all__ = ["add_user_actions", "register"]

ActionFactory = Callable[[str, str], argparse.ArgumentParser]


def register(commands: Any) -> None:
    _register_alias(commands)
    _register_list(commands)


def _register_alias(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "alias",
        help="addresses that stand for others",
        description="Aliases: one address standing for one or more others, here or "
        "elsewhere. A running server sees each change at its next RCPT.",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    add = actions.add_parser("add", help="add targets to an alias (made if new)")
    add.add_argument("address")
    add.add_argument("targets", nargs="+", metavar="TARGET")
    add.set_defaults(run=_alias_add)
    delete = actions.add_parser("del", help="remove targets from an alias, or the whole alias")
    delete.add_argument("address")
    delete.add_argument("targets", nargs="*", metavar="TARGET")
    delete.set_defaults(run=_alias_del)
    listing = actions.add_parser("list", help="every alias and its targets")
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    listing.set_defaults(run=_alias_list)
    for sub in (add, delete, listing):
        add_config_options(sub)


def _register_list(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "list",
        help="mailing lists",
        description="Mailing lists: members, an owner (who receives the list's bounces) and "
        "who may post (anyone, members or owner). A running server sees each change at its "
        "next RCPT.",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    create = actions.add_parser("create", help="make a new list")
    create.add_argument("address")
    create.add_argument("--owner", required=True, help="who gets the list's bounces")
    create.add_argument("--posting", choices=("anyone", "members", "owner"), default="anyone")
    create.add_argument("--member", action="append", default=[], help="a first member (repeat)")
    create.set_defaults(run=_list_create)
    change = actions.add_parser("set", help="change a list's owner or posting rule")
    change.add_argument("address")
    change.add_argument("--owner")
    change.add_argument("--posting", choices=("anyone", "members", "owner"))
    change.set_defaults(run=_list_set)
    add = actions.add_parser("add", help="add members")
    add.add_argument("address")
    add.add_argument("members", nargs="+", metavar="MEMBER")
    add.set_defaults(run=_list_add)
    remove = actions.add_parser("remove", help="remove members")
    remove.add_argument("address")
    remove.add_argument("members", nargs="+", metavar="MEMBER")
    remove.set_defaults(run=_list_remove)
    delete = actions.add_parser("del", help="delete a list")
    delete.add_argument("address")
    delete.set_defaults(run=_list_del)
    show = actions.add_parser("show", help="a list's owner, posting rule and members")
    show.add_argument("address")
    show.add_argument("--json", action="store_true", help="print JSON, for scripts")
    show.set_defaults(run=_list_show)
    listing = actions.add_parser("list", help="every list")
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    listing.set_defaults(run=_list_list)
    for sub in (create, change, add, remove, delete, show, listing):
        add_config_options(sub)


def add_user_actions(action: ActionFactory) -> None:
    """``pigeon user set`` and ``pigeon user show``, beside the password actions."""
    change = action("set", "set a user's full name, quota, extra addresses, forward or move")
    change.add_argument("address")
    change.add_argument("--name", help="the full name VRFY shows")
    change.add_argument("--quota", type=int, metavar="OCTETS", help="mailbox limit; 0: none")
    change.add_argument(
        "--forward",
        nargs="+",
        metavar="ADDRESS",
        help="send the user's mail on to these (include the user's own address to keep a copy)",
    )
    change.add_argument("--no-forward", action="store_true", help="stop forwarding")
    change.add_argument("--moved-to", metavar="ADDRESS", help="refuse mail with 551, naming it")
    change.add_argument("--not-moved", action="store_true", help="take mail again")
    change.add_argument("--add-address", action="append", default=[], metavar="ADDRESS")
    change.add_argument("--remove-address", action="append", default=[], metavar="ADDRESS")
    change.set_defaults(run=_user_set)
    show = action("show", "where a user's mail goes, and their attributes")
    show.add_argument("address")
    show.add_argument("--json", action="store_true", help="print JSON, for scripts")
    show.set_defaults(run=_user_show)


# -- plumbing ------------------------------------------------------------------------------------
_STATUS = {
    Problem.INVALID: _exit.USAGE,
    Problem.NOT_OURS: _exit.DATA_ERROR,
    Problem.IN_CONFIG: _exit.DATA_ERROR,
    Problem.CONFLICT: _exit.DATA_ERROR,
    Problem.UNKNOWN: _exit.NO_INPUT,
}


def _run(args: argparse.Namespace, work: Callable[[DirectoryAdmin], int]) -> int:
    command = f"pigeon {args.command} {args.action}"
    try:
        path = config_path(args)
        config = load_command_config(args)
        store = DirectoryStore(config.directory_db)
    except ConfigError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return _exit.CONFIG
    try:
        # With only --data-dir, the served domains are not known here: not checked.
        return work(DirectoryAdmin(config, store, check_domains=path is not None))
    except DirectoryAdminError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return _STATUS[error.problem]
    finally:
        store.close()
        if store.changed:
            announce(config.data_dir, "directory")  # running workers read it again now


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- aliases -------------------------------------------------------------------------------------
def _alias_add(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        entry = admin.add_alias(args.address, args.targets)
        print(f"{entry.address} -> {', '.join(entry.targets)}")
        return _exit.OK

    return _run(args, work)


def _alias_del(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        left = admin.remove_alias(args.address, args.targets)
        address = admin.address(args.address)
        print(f"{address} -> {', '.join(left)}" if left else f"{address}: removed")
        return _exit.OK

    return _run(args, work)


def _alias_list(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        entries = admin.aliases()
        if args.json:
            _print_json(
                [
                    {"address": e.address, "targets": list(e.targets), "source": e.source}
                    for e in entries
                ]
            )
            return _exit.OK
        if not entries:
            print("no aliases")
        for entry in entries:
            mark = " (config file)" if entry.source == "config" else ""
            print(f"{entry.address}{mark} -> {', '.join(entry.targets)}")
        return _exit.OK

    return _run(args, work)


# -- lists ---------------------------------------------------------------------------------------
def _list_create(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        entry = admin.create_list(
            args.address, owner=args.owner, posting=args.posting, members=args.member
        )
        return _print_list(entry, as_json=False)

    return _run(args, work)


def _list_set(args: argparse.Namespace) -> int:
    if args.owner is None and args.posting is None:
        print("pigeon list set: give --owner or --posting", file=sys.stderr)
        return _exit.USAGE
    return _run(
        args,
        lambda admin: _print_list(
            admin.change_list(args.address, owner=args.owner, posting=args.posting),
            as_json=False,
        ),
    )


def _list_add(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda admin: _print_list(admin.change_list(args.address, add=args.members), as_json=False),
    )


def _list_remove(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda admin: _print_list(
            admin.change_list(args.address, remove=args.members), as_json=False
        ),
    )


def _list_del(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        admin.delete_list(args.address)
        print(f"{admin.address(args.address)}: deleted")
        return _exit.OK

    return _run(args, work)


def _list_show(args: argparse.Namespace) -> int:
    return _run(
        args, lambda admin: _print_list(admin.mailing_list(args.address), as_json=args.json)
    )


def _list_json(entry: ListEntry, *, members: bool = True) -> dict[str, Any]:
    spec = entry.spec
    return {
        "address": entry.address,
        "owner": spec.owner,
        "posting": spec.posting,
        "members": list(spec.members) if members else len(spec.members),
        "source": entry.source,
    }


def _print_list(entry: ListEntry, *, as_json: bool) -> int:
    if as_json:
        _print_json(_list_json(entry))
        return _exit.OK
    members = entry.spec.members
    print(
        f"{entry.address}: owner {entry.spec.owner}, posting by {entry.spec.posting},"
        f" {len(members)} member{'s' if len(members) != 1 else ''}"
    )
    for member in members:
        print(f"  {member}")
    return _exit.OK


def _list_list(args: argparse.Namespace) -> int:
    def work(admin: DirectoryAdmin) -> int:
        entries = admin.lists()
        if args.json:
            _print_json([_list_json(e, members=False) for e in entries])
            return _exit.OK
        if not entries:
            print("no mailing lists")
        for entry in entries:
            mark = " (config file)" if entry.source == "config" else ""
            spec = entry.spec
            print(
                f"{entry.address}{mark}: {len(spec.members)} members, owner {spec.owner},"
                f" posting by {spec.posting}"
            )
        return _exit.OK

    return _run(args, work)


# -- users ---------------------------------------------------------------------------------------
def _user_set(args: argparse.Namespace) -> int:
    if (args.forward and args.no_forward) or (args.moved_to and args.not_moved):
        print("pigeon user set: contradictory options", file=sys.stderr)
        return _exit.USAGE

    def work(admin: DirectoryAdmin) -> int:
        admin.set_user(
            args.address,
            name=args.name,
            quota=args.quota,
            forward=[] if args.no_forward else args.forward,
            moved_to="" if args.not_moved else args.moved_to,
            add_addresses=args.add_address,
            remove_addresses=args.remove_address,
        )
        return _show_user(admin, args.address, as_json=False)

    return _run(args, work)


def _user_show(args: argparse.Namespace) -> int:
    return _run(args, lambda admin: _show_user(admin, args.address, as_json=args.json))


def _show_user(admin: DirectoryAdmin, address: str, *, as_json: bool) -> int:
    data: dict[str, Any] = {"address": admin.ours(address)}
    data.update(describe_route(admin.route(address)))
    if as_json:
        _print_json(data)
        return _exit.OK
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key + ':':<12} {shown}")
    return _exit.OK
