"""The event loop of a server process: uvloop when it is installed (the same asyncio API, a
faster loop), and the garbage collector tuned for a process that runs for weeks."""

from __future__ import annotations

import asyncio
import gc
import importlib

__all__ = ["settle_collector", "use_uvloop"]


def use_uvloop() -> bool:
    """Make new event loops uvloop loops; False when uvloop is not installed."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# Objects made in the youngest generation before a collection runs (Python's default: 700).
# Every message makes a few hundred short-lived objects, nearly all freed by reference
# counting; collecting less often costs a little memory and saves a measurable share of
# the time a message takes.
_YOUNG_THRESHOLD = 10_000


def settle_collector() -> None:
    """Call just before the server starts: what was made so far (modules, configuration)
    lives as long as the process, so it is moved out of the collector's sight (gc.freeze),
    and the youngest generation is collected less often. Before, not after, the start: the
    messages recovered from the spool come and go, and must stay collectable."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_THRESHOLD, middle, oldest)
