"""The envelope of an accepted message: who sent it, to whom, and how it arrived.

The envelope travels with the body in the spool record and is what delivery agents and
bounces read. It is plain data: no I/O, no policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Envelope"]


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything SMTP said about a message besides its content.

    ``sender`` is the reverse-path without angle brackets; the null reverse-path ``<>`` is the
    empty string. ``recipients`` are forward-paths as accepted (``local@domain``), in the order
    RCPT accepted them.
    """

    sender: str
    recipients: tuple[str, ...]
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    protocol: str = "ESMTP"
    body_type: str = "7BIT"
    received_at: float = 0.0
    mail_parameters: tuple[tuple[str, str | None], ...] = field(default=())

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "sender": self.sender,
                "recipients": list(self.recipients),
                "client_address": self.client_address,
                "client_name": self.client_name,
                "helo": self.helo,
                "protocol": self.protocol,
                "body_type": self.body_type,
                "received_at": self.received_at,
                "mail_parameters": [list(p) for p in self.mail_parameters],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Envelope:
        raw: dict[str, Any] = json.loads(data)
        return cls(
            sender=str(raw["sender"]),
            recipients=tuple(str(r) for r in raw["recipients"]),
            client_address=str(raw.get("client_address", "")),
            client_name=str(raw.get("client_name", "")),
            helo=str(raw.get("helo", "")),
            protocol=str(raw.get("protocol", "ESMTP")),
            body_type=str(raw.get("body_type", "7BIT")),
            received_at=float(raw.get("received_at", 0.0)),
            mail_parameters=tuple(
                (str(k), None if v is None else str(v)) for k, v in raw.get("mail_parameters", [])
            ),
        )
