"""What can go wrong when sending, as a tree (every class names the stage it failed at)::

    SendError                   the send could not get a per-recipient answer
    ├── ConnectError            no TCP connection (refused, unreachable, DNS of the host)
    ├── TLSError                the TLS handshake or certificate check failed
    ├── AuthError               the server refused the credentials, or offers no usable AUTH
    ├── ProtocolError           the server spoke something that is not SMTP, or hung up
    └── TimeoutError_           the server stopped answering within the timeout

Refusals the server gives as replies (550 for one recipient, 552 for the message) are not
errors: they are results, per recipient, in ``SendResult``.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConnectError",
    "ProtocolError",
    "SendError",
    "TLSError",
    "TimeoutError_",
]


class SendError(Exception):
    """Sending failed at ``stage`` (connect, greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT,
    DATA, QUIT); ``temporary`` says whether trying again later may work."""

    def __init__(self, stage: str, message: str, *, temporary: bool = True) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.temporary = temporary


class ConnectError(SendError):
    pass


class TLSError(SendError):
    pass


class AuthError(SendError):
    pass


class ProtocolError(SendError):
    pass


class TimeoutError_(SendError):
    pass
