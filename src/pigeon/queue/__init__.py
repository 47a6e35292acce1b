"""The queue: the spool of accepted messages, and the scheduler that delivers them.

``pigeon.queue`` is the only writer of the spool. The server hands it a message through
``Spool.commit`` and may answer 250 once that returns; the scheduler takes it from there.
"""

from .envelope import Envelope
from .ids import new_queue_id
from .index import QueueIndex, QueueIndexError, RecipientState
from .scheduler import Scheduler
from .spool import BodyReader, MessageWriter, Spool, SpooledMessage, SpoolError

__all__ = [
    "BodyReader",
    "Envelope",
    "MessageWriter",
    "QueueIndex",
    "QueueIndexError",
    "RecipientState",
    "Scheduler",
    "Spool",
    "SpoolError",
    "SpooledMessage",
    "new_queue_id",
]
