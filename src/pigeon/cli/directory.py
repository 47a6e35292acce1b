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
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pigeon.config import Config, ConfigError, load_config
from pigeon.directory import (
    Alias,
    Directory,
    DirectoryStore,
    DirectoryStoreError,
    Forward,
    Mailbox,
    MailingList,
    Moved,
    canonical_address,
)
from pigeon.smtp import parse_mailbox

from . import _exit

__all__ = ["add_user_actions", "register"]

ActionFactory = Callable[[str, str], argparse.ArgumentParser]

_CONFIG_GIVEN = False  # whether this run read a configuration file (set by _run)


def register(commands: Any) -> None:
    _register_alias(commands)
    _register_list(commands)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help="the server's TOML configuration (default: $PIGEON_CONFIG)",
    )
    parser.add_argument("--data-dir", type=Path, help="the server's data directory")


def _register_alias(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "alias",
        help="addresses that stand for others",
        description="Aliases: one address standing for one or more others, here or "
        "elsewhere. A running server sees each change at its next RCPT.",
    )
    parser.set_defaults(run=lambda args: _usage(parser))
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
        _common(sub)


def _register_list(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "list",
        help="mailing lists",
        description="Mailing lists: members, an owner (who receives the list's bounces) and "
        "who may post (anyone, members or owner). A running server sees each change at its "
        "next RCPT.",
    )
    parser.set_defaults(run=lambda args: _usage(parser))
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
        _common(sub)


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
class _Refused(Exception):
    def __init__(self, message: str, status: int = _exit.DATA_ERROR) -> None:
        super().__init__(message)
        self.status = status


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return _exit.USAGE


def _run(args: argparse.Namespace, work: Callable[[Config, DirectoryStore], int]) -> int:
    command = f"pigeon {args.command} {args.action}"
    try:
        path = args.config
        if path is None and os.environ.get("PIGEON_CONFIG"):
            path = Path(os.environ["PIGEON_CONFIG"])
        config = load_config(path)
        global _CONFIG_GIVEN
        _CONFIG_GIVEN = path is not None
        if args.data_dir is not None:
            config = config.with_overrides(data_dir=args.data_dir)
        store = DirectoryStore(config.directory_db)
    except ConfigError as error:
        print(f"{command}: {error}", file=sys.stderr)
        return _exit.CONFIG
    try:
        return work(config, store)
    except (_Refused, DirectoryStoreError) as error:
        print(f"{command}: {error}", file=sys.stderr)
        return error.status if isinstance(error, _Refused) else _exit.DATA_ERROR
    finally:
        store.close()


def _address(text: str) -> str:
    """An address as given on the command line, checked."""
    mailbox = parse_mailbox(text.strip("<>"))
    if mailbox is None or not mailbox.domain:
        raise _Refused(f"{text!r} is not an address like user@example.test", _exit.USAGE)
    return str(mailbox)


def _ours(config: Config, text: str) -> str:
    """An address at one of the server's own domains (when a configuration file says which
    they are: with only --data-dir, the domains are not known here)."""
    address = _address(text)
    if not _CONFIG_GIVEN:
        return address
    directory = Directory.from_config(config)
    domain = address.rpartition("@")[2]
    if not directory.serves(domain):
        served = ", ".join(directory.domains) or "none"
        raise _Refused(f"{domain} is not a domain this server serves (it serves: {served})")
    return address


def _in_config(entries: Sequence[str], address: str) -> bool:
    wanted = canonical_address(address)
    return any(canonical_address(entry) == wanted for entry in entries)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# -- aliases -------------------------------------------------------------------------------------
def _alias_add(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _ours(config, args.address)
        if _in_config(list(config.aliases), address):
            raise _Refused(f"{address} is an alias in the configuration file; edit it there")
        if _in_config(list(config.lists), address):
            raise _Refused(f"{address} is a mailing list")
        targets = [_address(t) for t in args.targets]
        store.add_alias(address, targets)
        print(f"{address} -> {', '.join(store.alias(address))}")
        return _exit.OK

    return _run(args, work)


def _alias_del(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _address(args.address)
        if _in_config(list(config.aliases), address):
            raise _Refused(f"{address} is an alias in the configuration file; edit it there")
        removed = store.remove_alias(address, [_address(t) for t in args.targets])
        if not removed:
            raise _Refused(
                f"no alias {address}" + (" with those targets" if args.targets else ""),
                _exit.NO_INPUT,
            )
        left = store.alias(address)
        print(f"{address} -> {', '.join(left)}" if left else f"{address}: removed")
        return _exit.OK

    return _run(args, work)


def _alias_list(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        entries = [(a, t, "config") for a, t in config.aliases.items()]
        entries += [(a, t, "store") for a, t in store.aliases().items()]
        if args.json:
            _print_json([{"address": a, "targets": list(t), "source": s} for a, t, s in entries])
        elif not entries:
            print("no aliases")
        for address, targets, source in entries if not args.json else ():
            mark = " (config file)" if source == "config" else ""
            print(f"{address}{mark} -> {', '.join(targets)}")
        return _exit.OK

    return _run(args, work)


# -- lists ---------------------------------------------------------------------------------------
def _list_create(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _ours(config, args.address)
        if _in_config([*config.lists, *config.aliases], address):
            raise _Refused(f"{address} is defined in the configuration file")
        store.create_list(address, owner=_address(args.owner), posting=args.posting)
        if args.member:
            store.change_list(address, add=[_address(m) for m in args.member])
        return _show_list(store, address, as_json=False)

    return _run(args, work)


def _list_change(args: argparse.Namespace, **change: Any) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _address(args.address)
        if _in_config(list(config.lists), address):
            raise _Refused(f"list {address} is in the configuration file; edit it there")
        if store.mailing_list(address) is None:
            raise _Refused(f"no list {address}", _exit.NO_INPUT)
        store.change_list(address, **change)
        return _show_list(store, address, as_json=False)

    return _run(args, work)


def _list_set(args: argparse.Namespace) -> int:
    owner = None if args.owner is None else _checked(args.owner)
    if owner is None and args.posting is None:
        print("pigeon list set: give --owner or --posting", file=sys.stderr)
        return _exit.USAGE
    return _list_change(args, owner=owner, posting=args.posting)


def _list_add(args: argparse.Namespace) -> int:
    return _list_change(args, add=[_checked(m) for m in args.members])


def _list_remove(args: argparse.Namespace) -> int:
    return _list_change(args, remove=[_checked(m) for m in args.members])


def _checked(text: str) -> str:
    """As _address, for arguments checked before the store opens (they raise usage)."""
    mailbox = parse_mailbox(text.strip("<>"))
    return text if mailbox is None or not mailbox.domain else str(mailbox)


def _list_del(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _address(args.address)
        if _in_config(list(config.lists), address):
            raise _Refused(f"list {address} is in the configuration file; edit it there")
        if not store.delete_list(address):
            raise _Refused(f"no list {address}", _exit.NO_INPUT)
        print(f"{address}: deleted")
        return _exit.OK

    return _run(args, work)


def _list_show(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _address(args.address)
        for name, spec in config.lists.items():
            if canonical_address(name) == canonical_address(address):
                data = {
                    "address": name,
                    "owner": spec.owner,
                    "posting": spec.posting,
                    "members": list(spec.members),
                    "source": "config",
                }
                return _print_list(data, as_json=args.json)
        if store.mailing_list(address) is None:
            raise _Refused(f"no list {address}", _exit.NO_INPUT)
        return _show_list(store, address, as_json=args.json)

    return _run(args, work)


def _show_list(store: DirectoryStore, address: str, *, as_json: bool) -> int:
    spec = store.mailing_list(address)
    assert spec is not None
    data = {
        "address": canonical_address(address),
        "owner": spec.owner,
        "posting": spec.posting,
        "members": list(spec.members),
        "source": "store",
    }
    return _print_list(data, as_json=as_json)


def _print_list(data: dict[str, Any], *, as_json: bool) -> int:
    if as_json:
        _print_json(data)
        return _exit.OK
    members = data["members"]
    print(
        f"{data['address']}: owner {data['owner']}, posting by {data['posting']},"
        f" {len(members)} member{'s' if len(members) != 1 else ''}"
    )
    for member in members:
        print(f"  {member}")
    return _exit.OK


def _list_list(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        entries = [(a, spec, "config") for a, spec in config.lists.items()]
        entries += [(a, spec, "store") for a, spec in store.lists().items()]
        if args.json:
            _print_json(
                [
                    {
                        "address": a,
                        "owner": s.owner,
                        "posting": s.posting,
                        "members": len(s.members),
                        "source": src,
                    }
                    for a, s, src in entries
                ]
            )
            return _exit.OK
        if not entries:
            print("no mailing lists")
        for address, spec, source in entries:
            mark = " (config file)" if source == "config" else ""
            print(
                f"{address}{mark}: {len(spec.members)} members, owner {spec.owner},"
                f" posting by {spec.posting}"
            )
        return _exit.OK

    return _run(args, work)


# -- users ---------------------------------------------------------------------------------------
def _user_set(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        address = _ours(config, args.address)
        if _in_config(list(config.users), address):
            raise _Refused(f"{address} has its attributes in the configuration file; edit it there")
        if (args.forward and args.no_forward) or (args.moved_to and args.not_moved):
            raise _Refused("contradictory options", _exit.USAGE)
        if args.quota is not None and args.quota < 0:
            raise _Refused("--quota: octets, 0 or more", _exit.USAGE)
        forward = (
            []
            if args.no_forward
            else ([_address(a) for a in args.forward] if args.forward else None)
        )
        moved_to = "" if args.not_moved else (_address(args.moved_to) if args.moved_to else None)
        store.set_user(
            address,
            name=args.name,
            quota=args.quota,
            forward=forward,
            moved_to=moved_to,
            add_addresses=[_ours(config, a) for a in args.add_address],
            remove_addresses=[_address(a) for a in args.remove_address],
        )
        return _show_user(config, store, address, as_json=False)

    return _run(args, work)


def _user_show(args: argparse.Namespace) -> int:
    def work(config: Config, store: DirectoryStore) -> int:
        return _show_user(config, store, _ours(config, args.address), as_json=args.json)

    return _run(args, work)


def _show_user(config: Config, store: DirectoryStore, address: str, *, as_json: bool) -> int:
    directory = Directory.from_config(config, store=store)
    local, _, domain = address.rpartition("@")
    route = directory.route(local, domain)
    data: dict[str, Any] = {"address": address, "route": _route_name(route)}
    if isinstance(route, Mailbox):
        data.update(mailbox=str(route.path), name=route.name, quota=route.quota)
    elif isinstance(route, Forward):
        data.update(forward=list(route.targets), keeps_copy=route.mailbox is not None)
    elif isinstance(route, Moved):
        data.update(moved_to=route.new_address)
    elif isinstance(route, Alias):
        data.update(targets=list(route.targets))
    elif isinstance(route, MailingList):
        data.update(owner=route.owner, members=len(route.members))
    if as_json:
        _print_json(data)
        return _exit.OK
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key + ':':<12} {shown}")
    return _exit.OK


def _route_name(route: object) -> str:
    names = {
        Mailbox: "mailbox",
        Forward: "forward",
        Moved: "moved",
        Alias: "alias",
        MailingList: "list",
    }
    return next((n for kind, n in names.items() if isinstance(route, kind)), "unknown")
