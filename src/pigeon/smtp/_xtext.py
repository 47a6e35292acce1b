"""xtext (RFC 3461 section 4): how DSN parameters carry any text in ESMTP parameters."""

from __future__ import annotations

__all__ = ["xtext_decode", "xtext_encode"]


def xtext_decode(text: str) -> str:
    """RFC 3461 section 4: "+XX" is the octet with hexadecimal code XX (UTF-8 octets decode
    to their character)."""
    if "+" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "+" and _is_hex(text[i + 1 : i + 3]):
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


def xtext_encode(text: str) -> str:
    """The inverse of :func:`xtext_decode`: "+", "=" and what is not printable ASCII become
    "+XX" (RFC 3461 section 4)."""
    return "".join(
        f"+{b:02X}" if b in b"+=" or not 33 <= b <= 126 else chr(b) for b in text.encode()
    )


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)
