"""Which build of Pigeon is running: the compiled one (``PIGEON_COMPILE=1``, mypyc) or pure
Python. Both run the same source; an operator comparing figures needs to know which."""

from __future__ import annotations

import importlib.machinery

from .smtp import _server

__all__ = ["compiled", "describe"]


def compiled() -> bool:
    """True when the protocol core was loaded from an extension module: setup.py compiles
    all of its listed modules or none, so one tells for all."""
    origin = _server.__file__ or ""
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def describe() -> str:
    return "compiled build" if compiled() else "pure-Python build"
