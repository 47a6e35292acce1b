"""The event loop: uvloop when it is installed (the same asyncio API, a faster loop)."""

from __future__ import annotations

import asyncio
import importlib

__all__ = ["use_uvloop"]


def use_uvloop() -> bool:
    """Make new event loops uvloop loops; False when uvloop is not installed."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True
