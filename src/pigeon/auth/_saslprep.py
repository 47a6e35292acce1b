"""SASLprep (RFC 4013): the stringprep profile that makes a password compare equal however
the client's keyboard composed it. SCRAM (RFC 5802 section 2.2) and PLAIN (RFC 4616
section 5) both ask for it.

An ASCII password without control characters is returned unchanged, so the common case costs
one check.
"""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SASLprepError", "saslprep"]


class SASLprepError(ValueError):
    """The string holds a character SASLprep prohibits (a control character, say)."""


def saslprep(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    # RFC 4013 section 2.1: non-ASCII spaces become a space; "commonly mapped to nothing"
    # (soft hyphen, zero-width joiners, ...) disappear.
    mapped = "".join(
        " " if stringprep.in_table_c12(c) else c for c in text if not stringprep.in_table_b1(c)
    )
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)  # section 2.2
    if not normalized:
        return normalized
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,  # unassigned code points (section 5: stored strings)
    )
    for char in normalized:
        if any(table(char) for table in prohibited):
            raise SASLprepError(f"character U+{ord(char):04X} is not allowed (RFC 4013)")
    # RFC 3454 section 6: right-to-left text must be wholly so, starting and ending with it.
    if any(stringprep.in_table_d1(c) for c in normalized):
        if any(stringprep.in_table_d2(c) for c in normalized):
            raise SASLprepError("mixes right-to-left and left-to-right text (RFC 3454 6)")
        if not (stringprep.in_table_d1(normalized[0]) and stringprep.in_table_d1(normalized[-1])):
            raise SASLprepError("right-to-left text must start and end so (RFC 3454 6)")
    return normalized
