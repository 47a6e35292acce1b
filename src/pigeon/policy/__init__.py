"""Who may do what: relaying, address verification, and the answers that go with them.

A check returns ``None`` to let a command through, or the reply that refuses it.
"""

from ._relay import RelayPolicy
from ._verify import VerifyPolicy

__all__ = ["RelayPolicy", "VerifyPolicy"]
