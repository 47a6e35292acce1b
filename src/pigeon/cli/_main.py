from __future__ import annotations

import argparse
from collections.abc import Sequence

from pigeon import __version__, build

from . import _exit, directory, fetch, queue, send, sendmail, serve, tls, user, watch, web

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pigeon", description="Pigeon: a mail transfer agent and SMTP toolkit."
    )
    parser.add_argument(
        "--version", action="version", version=f"pigeon {__version__} ({build.describe()})"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve.register(commands)
    send.register(commands)
    sendmail.register(commands)
    tls.register(commands)
    queue.register(commands)
    user.register(commands)
    watch.register(commands)
    fetch.register(commands)
    directory.register(commands)
    web.register(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        return _exit.show_usage(parser)
    result: int = args.run(args)
    return result
