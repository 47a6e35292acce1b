"""Whose address an authenticated user may send as (Postfix: reject_sender_login_mismatch)."""

from __future__ import annotations

from pigeon.smtp import Address, Reply, replies

__all__ = ["check_sender_login"]


def check_sender_login(sender: Address | None, user: str | None, *, enforce: bool) -> Reply | None:
    """None if ``user`` (authenticated, lower case; None when not) may use ``sender``.

    A user may use their own address only. The null sender ``<>`` is let through: it claims
    no one's address, and bounces and receipts need it. Unauthenticated sessions are not
    checked here (on an mx listener anyone may claim any sender, as in SMTP at large)."""
    if not enforce or user is None or sender is None:
        return None
    if f"{sender.local_part}@{sender.domain}".lower() == user:
        return None
    return replies.sender_not_owned(str(sender), user)
