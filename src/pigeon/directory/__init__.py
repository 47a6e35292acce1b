"""Who lives here: the domains Pigeon serves, their users, and where each user's mail goes.

The directory answers questions about addresses and knows nothing of SMTP: turning "no such
user" into a 550 is the policy's job.
"""

from ._directory import Alias, Directory, Forward, Mailbox, MailingList, Moved, Route
from ._names import canonical_address
from ._store import DirectoryStore, DirectoryStoreError

__all__ = [
    "Alias",
    "Directory",
    "DirectoryStore",
    "DirectoryStoreError",
    "Forward",
    "Mailbox",
    "MailingList",
    "Moved",
    "Route",
    "canonical_address",
]
