"""Composing and sending mail: to a named server, or straight to the recipients' exchangers.

    from pigeon.client import compose, send

    message = compose(sender="me@example.test", to=["you@example.test"], subject="Hi",
                      text="Hello.")
    result = send(message, server="smtp.example.test", port=587, tls="starttls",
                  username="me", password="secret")
    for recipient in result.refused:
        print(recipient.describe())

``send`` is synchronous; ``send_async`` is the same for asyncio programs; ``SMTPClient`` keeps
one connection open for several messages. Errors are described in ``pigeon.client._errors``.
"""

from ._api import send, send_async
from ._compose import Attachment, compose, envelope_recipients, make_7bit, to_bytes
from ._dsn import DsnRequest
from ._errors import AuthError, ConnectError, ProtocolError, SendError, TimeoutError_, TLSError
from ._mx import MailExchanger, MXError, resolve_mx, resolve_mx_authenticated
from ._results import RecipientResult, SendResult
from ._session import SMTPClient, TLSMode

__all__ = [
    "Attachment",
    "AuthError",
    "ConnectError",
    "DsnRequest",
    "MXError",
    "MailExchanger",
    "ProtocolError",
    "RecipientResult",
    "SMTPClient",
    "SendError",
    "SendResult",
    "TLSError",
    "TLSMode",
    "TimeoutError_",
    "compose",
    "envelope_recipients",
    "make_7bit",
    "resolve_mx",
    "resolve_mx_authenticated",
    "send",
    "send_async",
    "to_bytes",
]
