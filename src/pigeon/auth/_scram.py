"""SCRAM-SHA-256 (RFC 5802, RFC 7677): the arithmetic and the messages, both halves.

No channel binding: the server offers SCRAM-SHA-256 without -PLUS, so a client asking for
binding (``p=``) is refused, and a client saying it could bind but thinks the server cannot
(``y``) is right about that and welcome.

Message grammar (RFC 5802 section 7), as far as this code reads it::

    client-first = gs2-header client-first-bare
    gs2-header   = gs2-cbind-flag "," [ "a=" saslname ] ","
    gs2-cbind-flag = ("p=" cb-name) / "n" / "y"
    client-first-bare = [ "m=" ... "," ] "n=" saslname "," "r=" c-nonce [ "," extensions ]
    server-first = "r=" c-nonce s-nonce "," "s=" base64 "," "i=" posit-number [ "," ext ]
    client-final = "c=" base64(gs2-header) "," "r=" nonce [ "," ext ] "," "p=" base64
    server-final = ( "e=" server-error-value / "v=" base64 ) [ "," ext ]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from ._saslprep import SASLprepError, saslprep

__all__ = [
    "ITERATIONS",
    "ScramClient",
    "ScramCredentials",
    "ScramError",
    "client_key_from_proof",
    "make_nonce",
    "parse_attributes",
    "salted_keys",
    "signature",
]

NAME = "SCRAM-SHA-256"
# RFC 7677 section 4: at least 4096; Dovecot and Cyrus use this too.
ITERATIONS = 4096
MAX_ITERATIONS = 1_000_000  # a client refuses to spend more on a server's say-so


class ScramError(ValueError):
    """A SCRAM message is malformed, or the other side failed to prove itself."""


@dataclass(frozen=True, slots=True)
class ScramCredentials:
    """What the server keeps of a password for SCRAM (RFC 5802 section 3): the password
    cannot be recovered from it, and a client's proof can be checked against it."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    @classmethod
    def from_password(
        cls, password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
    ) -> ScramCredentials:
        salt = salt if salt is not None else secrets.token_bytes(16)
        client_key, server_key = salted_keys(password, salt, iterations)
        return cls(salt, iterations, hashlib.sha256(client_key).digest(), server_key)


def salted_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(ClientKey, ServerKey) for ``password``: Hi() is PBKDF2 with HMAC-SHA-256."""
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return client_key, server_key


def signature(key: bytes, auth_message: bytes) -> bytes:
    return hmac.digest(key, auth_message, "sha256")


def client_key_from_proof(proof: bytes, stored_key: bytes, auth_message: bytes) -> bytes:
    """ClientKey = ClientProof XOR ClientSignature; the caller checks H(ClientKey)."""
    client_signature = signature(stored_key, auth_message)
    if len(proof) != len(client_signature):
        raise ScramError("the client proof has the wrong length")
    return bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))


def make_nonce() -> str:
    # Printable ASCII without ",": base64 of random bytes, URL alphabet keeps "/" and "+" out.
    return secrets.token_urlsafe(18)


def parse_attributes(message: str) -> list[tuple[str, str]]:
    """``a=1,b=2`` as [("a", "1"), ("b", "2")]; an attribute is one letter (section 5.1)."""
    pairs = []
    for part in message.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise ScramError(f"malformed attribute {part[:20]!r}")
        pairs.append((part[0], part[2:]))
    return pairs


def decode_saslname(text: str) -> str:
    """saslname: "," is written "=2C" and "=" is "=3D"; any other "=" is an error."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "=":
            escape = text[index : index + 3]
            if escape == "=2C":
                out.append(",")
            elif escape == "=3D":
                out.append("=")
            else:
                raise ScramError("malformed saslname (a bare '=')")
            index += 3
        else:
            out.append(char)
            index += 1
    if not out:
        raise ScramError("empty name")
    return "".join(out)


def encode_saslname(text: str) -> str:
    return text.replace("=", "=3D").replace(",", "=2C")


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError("malformed base64 inside a SCRAM message") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScramClient:
    """The client half: ``first()``, then ``final(server_first)``, then ``verify(server_final)``
    (which raises ``ScramError`` unless the server proved it knows the password)."""

    def __init__(self, username: str, password: str, *, nonce: str | None = None) -> None:
        self._username = username
        self._password = password
        self._nonce = nonce or make_nonce()
        self._gs2_header = "n,,"  # no channel binding, no authorization identity
        try:
            saslprep(password)
            prepared = saslprep(username)
        except SASLprepError as error:
            raise ScramError(f"unusable user name or password: {error}") from None
        self._first_bare = f"n={encode_saslname(prepared)},r={self._nonce}"
        self._server_signature: bytes | None = None

    def first(self) -> bytes:
        return (self._gs2_header + self._first_bare).encode("utf-8")

    def final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("utf-8")
        except UnicodeDecodeError:
            raise ScramError("the server's first message is not UTF-8") from None
        attributes = parse_attributes(text)
        if attributes and attributes[0][0] == "m":
            raise ScramError("the server requires an extension this client does not know")
        values = dict(attributes)
        nonce, salt_text, count = values.get("r"), values.get("s"), values.get("i")
        if nonce is None or salt_text is None or count is None:
            raise ScramError("the server's first message lacks r=, s= or i=")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise ScramError("the server did not extend the client's nonce")
        if not count.isdigit() or not 0 < int(count) <= MAX_ITERATIONS:
            raise ScramError(f"unacceptable iteration count {count[:12]!r}")
        client_key, server_key = salted_keys(self._password, b64decode(salt_text), int(count))
        without_proof = f"c={b64encode(self._gs2_header.encode('ascii'))},r={nonce}"
        auth_message = f"{self._first_bare},{text},{without_proof}".encode()
        client_signature = signature(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        self._server_signature = signature(server_key, auth_message)
        return f"{without_proof},p={b64encode(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        if self._server_signature is None:
            raise ScramError("verify() before final()")
        try:
            values = dict(parse_attributes(server_final.decode("utf-8")))
        except UnicodeDecodeError:
            raise ScramError("the server's final message is not UTF-8") from None
        if "e" in values:
            raise ScramError(f"the server refused: {values['e'][:80]}")
        verifier = values.get("v")
        if verifier is None or not hmac.compare_digest(b64decode(verifier), self._server_signature):
            raise ScramError("the server's signature is wrong: it does not know the password")
