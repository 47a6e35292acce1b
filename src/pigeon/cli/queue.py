"""``pigeon queue``: see the mail queue and act on it (Postfix's mailq, postqueue, postsuper).

Every action has ``--json`` for scripts. Acting on a message asks the server process that
holds it (through the queue index, see ``pigeon.queue.admin``); when no server is running
the request waits and is carried out at its next start, and the command says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from pigeon.config import ConfigError
from pigeon.queue.admin import ActionReport, MessageReport, Problem, QueueAdmin, UnknownMessage
from pigeon.queue.index import IndexedMessage, IndexedRecipient, QueueIndexError, RequestAction

from . import _exit
from ._config import add_config_options, load_command_config

__all__ = ["register"]

IO_ERROR = 74  # EX_IOERR: the queue index could not be read

_ACTIONS = {
    "flush": "try deferred mail now (all of it, some messages, or one domain's)",
    "hold": "keep messages (or --all) in the queue, undelivered, until they are released",
    "release": "let held messages (or --all) go again",
    "delete": "remove messages (or --all) from the queue without telling their senders",
    "bounce": "give up on messages (or --all) now and return them to their senders",
}


def register(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    add_config_options(common)
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser: argparse.ArgumentParser = commands.add_parser(
        "queue",
        help="see the mail queue and act on it",
        description="See the mail queue and act on it, like Postfix's mailq, postqueue and "
        "postsuper. Works with the server running or not.",
    )
    parser.set_defaults(run=lambda args: _exit.show_usage(parser))
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="every queued message, with each recipient's state and last reply (like mailq)",
    )
    listing.set_defaults(run=_list)
    show = actions.add_parser(
        "show",
        parents=[common],
        help="one message: envelope, header and the history of its delivery attempts",
    )
    show.add_argument("queue_id", metavar="ID")
    show.set_defaults(run=_show)
    flush = actions.add_parser("flush", parents=[common], help=_ACTIONS["flush"])
    flush.add_argument("queue_ids", metavar="ID", nargs="*")
    flush.add_argument("--domain", metavar="DOMAIN", help="only mail for this domain")
    flush.set_defaults(run=_act)
    for name in ("hold", "release", "delete", "bounce"):
        action = actions.add_parser(name, parents=[common], help=_ACTIONS[name])
        action.add_argument("queue_ids", metavar="ID", nargs="*")
        action.add_argument(
            "--all", action="store_true", help="every message in the queue (postsuper's ALL)"
        )
        action.set_defaults(run=_act)
    check = actions.add_parser(
        "check",
        parents=[common],
        help="compare the queue index with the spool and say how to fix what disagrees",
    )
    check.set_defaults(run=_check)


def _admin(args: argparse.Namespace) -> QueueAdmin:
    return QueueAdmin(load_command_config(args).data_dir)


def _fail(args: argparse.Namespace, message: str, status: int) -> int:
    print(f"pigeon queue {args.action}: {message}", file=sys.stderr)
    return status


def _run(args: argparse.Namespace, work: Callable[[QueueAdmin], int]) -> int:
    """``work`` with the queue of the configured server; its failures as exit statuses."""
    try:
        return work(_admin(args))
    except ConfigError as error:
        return _fail(args, str(error), _exit.CONFIG)
    except QueueIndexError as error:
        return _fail(args, str(error), IO_ERROR)
    except UnknownMessage as unknown:
        for queue_id in unknown.args:
            _fail(args, f"no message {queue_id} in the queue", _exit.NO_INPUT)
        return _exit.NO_INPUT


def _list(args: argparse.Namespace) -> int:
    return _run(args, lambda admin: _print_list(args, admin.messages()))


def _print_list(args: argparse.Namespace, messages: list[IndexedMessage]) -> int:
    if args.json:
        print(json.dumps([_message_json(m) for m in messages], indent=2, ensure_ascii=False))
        return _exit.OK
    if not messages:
        print("Mail queue is empty")
        return _exit.OK
    print(f"{'QUEUE ID':<22} {'SIZE':>9}  {'ARRIVAL':<19}  SENDER / RECIPIENTS")
    for message in messages:
        sender = f"<{message.sender}>"
        print(f"{message.queue_id:<22} {message.size:>9}  {_when(message.arrival)}  {sender}")
        for recipient in message.recipients:
            print(f"    {recipient.state:<9} {recipient.address}{_next(recipient)}")
            if recipient.last_reply and not recipient.state.final:
                print(f"              {recipient.last_reply}")
    total = sum(m.size for m in messages)
    count = f"{len(messages)} message" + ("s" if len(messages) != 1 else "")
    print(f"-- {count}, {_kib(total)}")
    return _exit.OK


def _show(args: argparse.Namespace) -> int:
    def work(admin: QueueAdmin) -> int:
        report = admin.show(args.queue_id)
        if args.json:
            print(json.dumps(_report_json(report), indent=2, ensure_ascii=False))
        else:
            _print_report(report)
        return _exit.OK

    return _run(args, work)


def _act(args: argparse.Namespace) -> int:
    action = RequestAction(args.action)
    domain = getattr(args, "domain", None)
    if domain is not None and args.queue_ids:
        return _fail(args, "give queue ids or --domain, not both", _exit.USAGE)
    if action is not RequestAction.FLUSH:
        # Without an id the request is for every message: only when asked in so many words.
        if args.queue_ids and args.all:
            return _fail(args, "give queue ids or --all, not both", _exit.USAGE)
        if not args.queue_ids and not args.all:
            return _fail(args, "give a queue id, or --all for every message", _exit.USAGE)

    def work(admin: QueueAdmin) -> int:
        report = admin.act(action, queue_ids=args.queue_ids, domain=domain)
        if args.json:
            print(json.dumps(_action_json(report), indent=2, ensure_ascii=False))
        else:
            _print_action(report, args)
        # As rm does with files: the others were acted on; the missing ones make it fail.
        for queue_id in report.unknown:
            _fail(args, f"no message {queue_id} in the queue", _exit.NO_INPUT)
        return _exit.NO_INPUT if report.unknown else _exit.OK

    return _run(args, work)


def _check(args: argparse.Namespace) -> int:
    return _run(args, lambda admin: _print_problems(args, admin.check()))


def _print_problems(args: argparse.Namespace, problems: list[Problem]) -> int:
    if args.json:
        print(json.dumps([_problem_json(p) for p in problems], indent=2, ensure_ascii=False))
    elif not problems:
        print("queue index and spool agree")
    else:
        for problem in problems:
            where = f"{problem.queue_id}: " if problem.queue_id else ""
            print(f"{where}{problem.problem}")
            print(f"    fix: {problem.fix}")
    return _exit.DATA_ERROR if problems else _exit.OK


# -- text ----------------------------------------------------------------------------------------
def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _next(recipient: IndexedRecipient) -> str:
    details = []
    if recipient.attempts:
        details.append(f"{recipient.attempts} attempt" + ("s" if recipient.attempts > 1 else ""))
    if recipient.next_attempt is not None and recipient.state == "deferred":
        details.append(f"next {_when(recipient.next_attempt)}")
    return f"  ({', '.join(details)})" if details else ""


def _kib(size: int) -> str:
    return f"{size} octets" if size < 1024 else f"{size / 1024:.1f} KiB"


def _print_report(report: MessageReport) -> None:
    message = report.message
    envelope = message.envelope
    print(f"Queue ID:   {message.queue_id}")
    print(f"Arrival:    {_when(message.arrival)}")
    print(f"Size:       {message.size} octets")
    print(f"Sender:     <{envelope.sender}>")
    client = f"{envelope.client_name or 'unknown'} [{envelope.client_address}]"
    print(f"Client:     {client}, HELO {envelope.helo or '-'}, {envelope.protocol}")
    parameters = " ".join(k if v is None else f"{k}={v}" for k, v in envelope.mail_parameters)
    if parameters:
        print(f"Parameters: {parameters}")
    print("Recipients:")
    for recipient in message.recipients:
        print(f"  {recipient.state:<9} {recipient.address}{_next(recipient)}")
        if recipient.last_reply:
            print(f"            {recipient.status} {recipient.last_reply}")
    print("Header:")
    if report.header is None:
        print(f"  (not readable: {report.problem}; see pigeon queue check)")
    else:
        for line in report.header.rstrip("\n").split("\n"):
            print(f"  {line}")
    print("History:")
    if not report.attempts:
        print("  (no delivery attempt yet)")
    for attempt in report.attempts:
        print(
            f"  {_when(attempt.at)}  {attempt.address}  {attempt.outcome} {attempt.status}"
            f"  {attempt.detail}"
        )


def _print_action(report: ActionReport, args: argparse.Namespace) -> None:
    everything = getattr(args, "all", False)
    target = (
        "every message"
        if everything
        else ", ".join(q for q in args.queue_ids if q not in report.unknown)
        or (f"mail for {args.domain}" if getattr(args, "domain", None) else "")
    )
    if not report.workers:
        print(f"nothing to {report.action}: the queue is empty")
        return
    for line in report.lines:
        print(line)
    for worker in report.waiting:
        print(
            f"{target + ': ' if target else ''}{report.action} requested; Pigeon (worker"
            f" {worker}) is not running, so it is done when pigeon serve starts"
        )
    if not report.lines and not report.waiting:
        scope = "" if everything else target
        print(f"nothing to {report.action}" + (f" for {scope}" if scope else ""))


# -- JSON ----------------------------------------------------------------------------------------
def _recipient_json(recipient: IndexedRecipient) -> dict[str, Any]:
    return {
        "address": recipient.address,
        "state": recipient.state.value,
        "attempts": recipient.attempts,
        "next_attempt": recipient.next_attempt,
        "status": recipient.status or None,
        "last_reply": recipient.last_reply or None,
    }


def _message_json(message: IndexedMessage) -> dict[str, Any]:
    return {
        "queue_id": message.queue_id,
        "size": message.size,
        "arrival": message.arrival,
        "sender": message.sender,
        "recipients": [_recipient_json(r) for r in message.recipients],
    }


def _report_json(report: MessageReport) -> dict[str, Any]:
    envelope = report.message.envelope
    data = _message_json(report.message)
    data.update(
        client_address=envelope.client_address,
        client_name=envelope.client_name,
        helo=envelope.helo,
        protocol=envelope.protocol,
        mail_parameters=dict(envelope.mail_parameters),
        header=report.header,
        problem=report.problem or None,
        attempts=[
            {
                "at": a.at,
                "recipient": a.address,
                "outcome": a.outcome,
                "status": a.status,
                "detail": a.detail,
            }
            for a in report.attempts
        ],
    )
    return data


def _action_json(report: ActionReport) -> dict[str, Any]:
    return {
        "action": report.action.value,
        "done": report.lines,
        "waiting_for": report.waiting,
        "unknown": list(report.unknown),
    }


def _problem_json(problem: Problem) -> dict[str, Any]:
    return {"queue_id": problem.queue_id, "problem": problem.problem, "fix": problem.fix}
