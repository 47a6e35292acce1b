"""The ``pigeon`` command. Each subcommand lives in its own module; this one only dispatches."""

from ._main import main

__all__ = ["main"]
