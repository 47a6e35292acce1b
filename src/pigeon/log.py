"""Structured logging: one line per event, ``key=value`` pairs (logfmt).

Lines like ``event=message queue_id=... client=... from=<...> to=<...> size=... result=queued``
can be read by people and by grep, awk or a log shipper alike.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging", "event", "event_at"]

logger = logging.getLogger("pigeon")


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def event(name: str, /, **fields: object) -> None:
    """Log one event at INFO. ``None`` fields are left out."""
    event_at(logging.INFO, name, **fields)


def event_at(level: int, name: str, /, **fields: object) -> None:
    """Log one event at ``level``. ``None`` fields are left out."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"event={name}"]
    parts.extend(f"{key}={_quote(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, " ".join(parts))


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
    )
    root = logging.getLogger("pigeon")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
