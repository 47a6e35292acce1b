"""Authentication: SASL mechanisms (PLAIN, LOGIN, SCRAM-SHA-256) and the users they check.

The mechanisms do no I/O: the server feeds them the client's responses and acts on the steps
they return (see ``_mechanisms``). The user store keeps each password only as an scrypt hash
and as SCRAM's salted keys. ``ScramClient`` is the client half of SCRAM-SHA-256, for
``pigeon.client``.
"""

from ._mechanisms import (
    MECHANISMS,
    Challenge,
    CheckPassword,
    Failure,
    LoginMechanism,
    NeedCredentials,
    PlainMechanism,
    ScramSha256Mechanism,
    ServerMechanism,
    Step,
    Success,
    server_mechanism,
)
from ._passwords import hash_password, verify_password
from ._saslprep import SASLprepError, saslprep
from ._scram import ScramClient, ScramCredentials, ScramError
from ._store import UserEntry, UserExists, UserStore, UserStoreError, normalize_address

__all__ = [
    "MECHANISMS",
    "Challenge",
    "CheckPassword",
    "Failure",
    "LoginMechanism",
    "NeedCredentials",
    "PlainMechanism",
    "SASLprepError",
    "ScramClient",
    "ScramCredentials",
    "ScramError",
    "ScramSha256Mechanism",
    "ServerMechanism",
    "Step",
    "Success",
    "UserEntry",
    "UserExists",
    "UserStore",
    "UserStoreError",
    "hash_password",
    "normalize_address",
    "saslprep",
    "server_mechanism",
    "verify_password",
]
