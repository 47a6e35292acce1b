"""Who lives here: the domains Pigeon serves, their users, and where each user's mail goes.

The directory answers questions about addresses and knows nothing of SMTP: turning "no such
user" into a 550 is the policy's job.
"""

from ._directory import Directory, Mailbox

__all__ = ["Directory", "Mailbox"]
