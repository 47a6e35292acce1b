"""Server halves of the SASL mechanisms (RFC 4422): PLAIN, LOGIN and SCRAM-SHA-256.

A mechanism is a small state machine with no I/O. It takes the client's responses (decoded
from base64 already) and says what comes next, as one of these steps:

- ``Challenge(data)``: send it (334) and feed the client's answer to ``respond()``;
- ``CheckPassword(username, password)``: the exchange is over; the caller checks the pair
  against the user store (PLAIN, LOGIN);
- ``NeedCredentials(username)``: look the user's SCRAM keys up and give them (or None, for
  no such user) to ``credentials()``, which answers with the next step;
- ``Success(username)``: authenticated;
- ``Failure(reason, bad_credentials)``: over; ``bad_credentials`` tells wrong secrets (535
  with the failure delay) from a client that broke the mechanism's rules.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import ClassVar

from ._scram import (
    ITERATIONS,
    ScramCredentials,
    ScramError,
    b64decode,
    b64encode,
    client_key_from_proof,
    decode_saslname,
    make_nonce,
    parse_attributes,
    signature,
)

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CheckPassword",
    "Failure",
    "LoginMechanism",
    "NeedCredentials",
    "PlainMechanism",
    "ScramSha256Mechanism",
    "ServerMechanism",
    "Step",
    "Success",
    "server_mechanism",
]


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class CheckPassword:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    username: str


@dataclass(frozen=True, slots=True)
class Success:
    username: str


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    bad_credentials: bool = False


Step = Challenge | CheckPassword | NeedCredentials | Success | Failure

# Salts for users who do not exist are derived from the name with this key, so asking twice
# gets the same salt, as for a user who does (fresh random salts would give them away).
_PHANTOM_SALT_KEY = secrets.token_bytes(32)


class ServerMechanism:
    name: ClassVar[str]

    def start(self) -> Step:
        """The first step when the client gave no initial response."""
        return Challenge(b"")

    def respond(self, data: bytes) -> Step:
        raise NotImplementedError

    def credentials(self, found: ScramCredentials | None) -> Step:
        raise RuntimeError(f"{self.name} asks for no stored credentials")


def _utf8(data: bytes, what: str) -> str | Failure:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Failure(f"{what} is not UTF-8")


class PlainMechanism(ServerMechanism):
    """RFC 4616: one message, ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def respond(self, data: bytes) -> Step:
        text = _utf8(data, "the PLAIN message")
        if isinstance(text, Failure):
            return text
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1]:
            return Failure("malformed PLAIN message (expected authzid NUL user NUL password)")
        authzid, username, password = parts
        if authzid and authzid.lower() != username.lower():
            # Acting for someone else would need a rule saying who may; there is none.
            return Failure("authorization identity differs from the user", bad_credentials=True)
        return CheckPassword(username, password)


class LoginMechanism(ServerMechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login): user name, then password, each
    asked for with the traditional prompts. An initial response is taken as the user name,
    as Postfix and Exchange do."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self) -> Step:
        return Challenge(b"Username:")

    def respond(self, data: bytes) -> Step:
        text = _utf8(data, "the LOGIN response")
        if isinstance(text, Failure):
            return text
        if self._username is None:
            if not text:
                return Failure("empty user name")
            self._username = text
            return Challenge(b"Password:")
        return CheckPassword(self._username, text)


class ScramSha256Mechanism(ServerMechanism):
    """SCRAM-SHA-256 (RFC 7677), without channel binding. After the proof checks out the
    server's signature goes to the client as a last challenge (RFC 4954 section 4 has no
    room for data in the 235), and the client's empty answer completes the exchange."""

    name = "SCRAM-SHA-256"
    _FIRST, _LOOKUP, _FINAL, _VERIFIED, _DONE = range(5)

    def __init__(self, *, nonce: str | None = None) -> None:
        self._state = self._FIRST
        self._server_nonce = nonce or make_nonce()
        self._username = ""
        self._gs2_header = ""
        self._first_bare = ""
        self._client_nonce = ""
        self._server_first = ""
        self._credentials: ScramCredentials | None = None
        self._known_user = False

    def respond(self, data: bytes) -> Step:
        try:
            return self._respond(data)
        except ScramError as error:
            self._state = self._DONE
            return Failure(str(error))

    def _respond(self, data: bytes) -> Step:
        text = _utf8(data, "the SCRAM message")
        if isinstance(text, Failure):
            return text
        if self._state == self._FIRST:
            return self._client_first(text)
        if self._state == self._FINAL:
            return self._client_final(text)
        if self._state == self._VERIFIED:
            self._state = self._DONE
            if data:
                return Failure("expected an empty response after the server's signature")
            return Success(self._username)
        raise ScramError("no response expected now")

    def _client_first(self, text: str) -> Step:
        flag, comma, rest = text.partition(",")
        authzid, comma2, bare = rest.partition(",")
        if not comma or not comma2:
            raise ScramError("malformed GS2 header")
        if flag.startswith("p="):
            # The client insists on channel binding, which needs SCRAM-SHA-256-PLUS: not
            # offered here (RFC 5802 section 6: fail, "channel-binding-not-supported").
            raise ScramError("channel binding is not supported (no SCRAM-SHA-256-PLUS)")
        if flag not in ("n", "y"):
            raise ScramError("malformed GS2 channel binding flag")
        attributes = parse_attributes(bare)
        if attributes and attributes[0][0] == "m":
            raise ScramError("mandatory SCRAM extensions are not supported")
        if len(attributes) < 2 or attributes[0][0] != "n" or attributes[1][0] != "r":
            raise ScramError("the first message must begin n=user,r=nonce")
        username = decode_saslname(attributes[0][1])
        nonce = attributes[1][1]
        if not nonce or not all(0x21 <= ord(c) <= 0x7E and c != "," for c in nonce):
            raise ScramError("malformed client nonce")
        if authzid:
            if not authzid.startswith("a="):
                raise ScramError("malformed authorization identity")
            if decode_saslname(authzid[2:]).lower() != username.lower():
                self._state = self._DONE
                return Failure("authorization identity differs from the user", True)
        self._username = username
        self._gs2_header = f"{flag},{authzid},"
        self._first_bare = bare
        self._client_nonce = nonce
        self._state = self._LOOKUP
        return NeedCredentials(username)

    def credentials(self, found: ScramCredentials | None) -> Step:
        if self._state != self._LOOKUP:
            raise RuntimeError("credentials() out of turn")
        self._known_user = found is not None
        if found is None:
            # Go on as if the user existed, so the exchange does not tell who does.
            salt = hmac.digest(_PHANTOM_SALT_KEY, self._username.lower().encode(), "sha256")
            found = ScramCredentials(salt[:16], ITERATIONS, secrets.token_bytes(32), b"")
        self._credentials = found
        nonce = self._client_nonce + self._server_nonce
        self._server_first = f"r={nonce},s={b64encode(found.salt)},i={found.iterations}"
        self._state = self._FINAL
        return Challenge(self._server_first.encode("ascii"))

    def _client_final(self, text: str) -> Step:
        self._state = self._DONE
        without_proof, comma, proof_part = text.rpartition(",")
        if not comma or not proof_part.startswith("p="):
            raise ScramError("the final message must end with p=proof")
        attributes = parse_attributes(without_proof)
        if len(attributes) < 2 or attributes[0][0] != "c" or attributes[1][0] != "r":
            raise ScramError("the final message must begin c=binding,r=nonce")
        if b64decode(attributes[0][1]) != self._gs2_header.encode("utf-8"):
            raise ScramError("channel binding data differs from the GS2 header")
        if attributes[1][1] != self._client_nonce + self._server_nonce:
            raise ScramError("wrong nonce")
        proof = b64decode(proof_part[2:])
        credentials = self._credentials
        assert credentials is not None
        auth_message = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        client_key = client_key_from_proof(proof, credentials.stored_key, auth_message)
        valid = hmac.compare_digest(hashlib.sha256(client_key).digest(), credentials.stored_key)
        if not (valid and self._known_user):
            return Failure("invalid credentials", bad_credentials=True)
        self._state = self._VERIFIED
        verifier = b64encode(signature(credentials.server_key, auth_message))
        return Challenge(f"v={verifier}".encode("ascii"))


MECHANISMS: dict[str, type[ServerMechanism]] = {
    mechanism.name: mechanism
    for mechanism in (ScramSha256Mechanism, PlainMechanism, LoginMechanism)
}
"""Every mechanism this server knows, strongest first (the order EHLO lists them in)."""


def server_mechanism(name: str) -> ServerMechanism | None:
    """A fresh server half of mechanism ``name`` (case-insensitive), or None if unknown."""
    factory = MECHANISMS.get(name.upper())
    return None if factory is None else factory()
