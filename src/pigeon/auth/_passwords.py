"""Password hashes for PLAIN and LOGIN: scrypt (RFC 7914) from the standard library.

The stored form names its parameters, so they can be raised later without breaking the
hashes already stored::

    $scrypt$ln=15,r=8,p=1$<salt, base64>$<hash, base64>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from ._saslprep import SASLprepError, saslprep

__all__ = ["hash_password", "verify_password"]

# n = 2**15, r = 8, p = 1: 32 MiB and some tens of milliseconds per check. Dearer would
# be safer against a stolen users.db, but every check runs while a client waits, and many
# clients may be checked at once.
_LOG_N, _R, _P = 15, 8, 1
_LENGTH = 32
_PREFIX = "$scrypt$"
# Above these a stored hash would cost more than any check should; it is refused instead.
_MAX_LOG_N, _MAX_R, _MAX_P = 20, 16, 4


def _scrypt(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        saslprep(password).encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r * p,  # the 128*n*r the algorithm needs, with room to spare
        dklen=_LENGTH,
    )


def hash_password(password: str) -> str:
    """The stored form of ``password``; raises ``SASLprepError`` for a password holding
    characters no client could be relied on to send the same way (controls, unassigned)."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, _LOG_N, _R, _P)
    salt_text = base64.b64encode(salt).decode("ascii")
    return f"{_PREFIX}ln={_LOG_N},r={_R},p={_P}${salt_text}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``; False for a stored form it cannot read."""
    if not stored.startswith(_PREFIX):
        return False
    try:
        parameters, salt_text, digest_text = stored[len(_PREFIX) :].split("$")
        values = dict(item.split("=", 1) for item in parameters.split(","))
        log_n, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(digest_text, validate=True)
    except (ValueError, KeyError, binascii.Error):
        return False
    if not (1 <= log_n <= _MAX_LOG_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        return False
    try:
        actual = _scrypt(password, salt, log_n, r, p)
    except SASLprepError:
        return False
    return hmac.compare_digest(actual, expected)
