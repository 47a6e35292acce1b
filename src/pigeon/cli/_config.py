"""The options by which the commands that work on a server's data find it: ``-c FILE``
(or ``$PIGEON_CONFIG``) and ``--data-dir DIR``, the same in every command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pigeon.config import Config, load_config

__all__ = ["add_action", "add_config_options", "config_path", "load_command_config"]


def add_config_options(parser: argparse.ArgumentParser, *, whose: str = "the server's") -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        help=f"{whose} TOML configuration (default: $PIGEON_CONFIG, else the defaults)",
    )
    parser.add_argument("--data-dir", type=Path, help=f"{whose} data_dir (overrides -c)")


def add_action(actions: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand (``pigeon user add``, ``pigeon web token list``...) that works on a
    server's data, with the options that find it."""
    sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text, description=help_text)
    add_config_options(sub)
    return sub


def config_path(args: argparse.Namespace) -> Path | None:
    """The configuration file named by -c or $PIGEON_CONFIG; None: the defaults."""
    if args.config is not None:
        return Path(args.config)
    named = os.environ.get("PIGEON_CONFIG")
    return Path(named) if named else None


def load_command_config(args: argparse.Namespace) -> Config:
    """The configuration, with --data-dir on top; raises ConfigError naming the problem."""
    config = load_config(config_path(args))
    if args.data_dir is not None:
        config = config.with_overrides(data_dir=args.data_dir)
    return config
