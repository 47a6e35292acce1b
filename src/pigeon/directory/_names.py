"""How the directory compares addresses: local parts without case and in Unicode NFC,
domains in their A-label form (so that bücher.test and xn--bcher-kva.test are one)."""

from __future__ import annotations

import unicodedata

from pigeon.smtp import domain_key

__all__ = ["canonical_address", "user_key"]


def user_key(local_part: str) -> str:
    """A composed and a decomposed "ö" find the same user (RFC 6532 section 3.1)."""
    return unicodedata.normalize("NFC", local_part).lower()


def canonical_address(address: str) -> str:
    local, _, domain = address.rpartition("@")
    return f"{user_key(local)}@{domain_key(domain)}"
