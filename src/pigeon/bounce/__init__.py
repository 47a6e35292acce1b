"""Delivery status notifications (RFC 3464): bounces, delay warnings, success notices.

This package only builds messages; it never sends them. A bounce goes back through the queue
like any other message, from the null reverse-path ``<>`` so that it can never bounce again.
"""

from ._dsn import Action, RecipientStatus, build_dsn

__all__ = ["Action", "RecipientStatus", "build_dsn"]
