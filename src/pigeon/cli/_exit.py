"""Exit statuses from sysexits.h, which mail programs and their callers have always used."""

from __future__ import annotations

import argparse
import sys

from pigeon.client import SendResult

OK = 0
# Not from sysexits.h: argparse's own status for a command line it cannot take, kept for a
# command group named without its subcommand (``pigeon queue``) and for ``pigeon`` alone.
COMMAND_LINE = 2
USAGE = 64  # the command was used wrongly (a bad address, a missing argument)
DATA_ERROR = 65  # the input message is unusable
NO_INPUT = 66  # an input file does not exist or cannot be read
NO_USER = 67  # the user named is unknown
UNAVAILABLE = 69  # a permanent failure: trying again will not help
SOFTWARE = 70
OS_ERROR = 71
CANT_CREATE = 73  # the thing to create exists already
TEMPORARY = 75  # EX_TEMPFAIL: try again later
PROTOCOL = 76  # the remote side broke the protocol
NO_PERMISSION = 77  # the credentials were refused
CONFIG = 78


def for_result(result: SendResult) -> int:
    """0 when every recipient was accepted; 69 when any was refused for good; else 75."""
    if result.all_accepted:
        return OK
    if any(r.permanent for r in result.recipients):
        return UNAVAILABLE
    return TEMPORARY


def show_usage(parser: argparse.ArgumentParser) -> int:
    """A command (or command group) run without what it needs: its help, on stderr."""
    parser.print_help(sys.stderr)
    return COMMAND_LINE
