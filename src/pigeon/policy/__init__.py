"""Who may do what: relaying, sender addresses, address verification, and the answers that
go with them.

A check returns ``None`` to let a command through, or the reply that refuses it.
"""

from ._anvil import Admission, Anvil, AnvilError
from ._limits import ClientLimits, CommandRate, RateLimiter
from ._relay import RelayPolicy
from ._sender import check_sender_login
from ._verify import EXPN_LIMIT, VerifyPolicy

__all__ = [
    "EXPN_LIMIT",
    "Admission",
    "Anvil",
    "AnvilError",
    "ClientLimits",
    "CommandRate",
    "RateLimiter",
    "RelayPolicy",
    "VerifyPolicy",
    "check_sender_login",
]
