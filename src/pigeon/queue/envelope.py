"""The envelope of an accepted message: who sent it, to whom, and how it arrived.

The envelope travels with the body in the spool record and is what delivery agents and
bounces read. It is plain data: no I/O, no policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string
from typing import Any, Final

from pigeon.smtp import xtext_decode

__all__ = ["MAIL_MODES", "Envelope"]

# How a message is to be delivered, after the command that began its transaction: "mail"
# (MAIL: the mailbox), or RFC 821 section 3.5's "send" (the user's terminal only), "soml"
# (the terminal if the user is logged on, else the mailbox) and "saml" (both).
MAIL_MODES = ("mail", "send", "soml", "saml")


# For what to_json does not write itself: json.dumps with options builds a new one per call.
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json_number(value: float) -> str:
    # What the encoder writes for a finite float; it alone knows NaN, infinities and ints.
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return _ENCODER.encode(value)


def _json_list(items: tuple[Any, ...]) -> str:
    # Parameters are rare: an empty list is the common case, the rest goes to the encoder
    # (which writes tuples as JSON lists).
    return _ENCODER.encode(items) if items else "[]"


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
    # The RCPT parameters of each recipient, in the order of ``recipients`` (empty: none).
    recipient_parameters: tuple[tuple[tuple[str, str | None], ...], ...] = field(default=())
    mode: str = "mail"  # one of MAIL_MODES

    # Written out, not generated: the compiled build compiles this one, not the one that
    # dataclasses makes at import, which cost every message 3 us (see pigeon.smtp._events).
    def __init__(
        self,
        sender: str,
        recipients: tuple[str, ...],
        *,
        client_address: str = "",
        client_name: str = "",
        helo: str = "",
        protocol: str = "ESMTP",
        body_type: str = "7BIT",
        received_at: float = 0.0,
        mail_parameters: tuple[tuple[str, str | None], ...] = (),
        recipient_parameters: tuple[tuple[tuple[str, str | None], ...], ...] = (),
        mode: str = "mail",
    ) -> None:
        object.__setattr__(self, "sender", sender)
        object.__setattr__(self, "recipients", recipients)
        object.__setattr__(self, "client_address", client_address)
        object.__setattr__(self, "client_name", client_name)
        object.__setattr__(self, "helo", helo)
        object.__setattr__(self, "protocol", protocol)
        object.__setattr__(self, "body_type", body_type)
        object.__setattr__(self, "received_at", received_at)
        object.__setattr__(self, "mail_parameters", mail_parameters)
        object.__setattr__(self, "recipient_parameters", recipient_parameters)
        object.__setattr__(self, "mode", mode)

    # -- RFC 3461 delivery status notification requests ----------------------------------
    @property
    def envelope_id(self) -> str | None:
        """ENVID, decoded from xtext: the sender's own name for this transaction."""
        value = self._mail_parameter("ENVID")
        return None if value is None else xtext_decode(value)

    @property
    def return_headers_only(self) -> bool:
        """RET=HDRS: a notification carries the original's header, not the whole message."""
        return (self._mail_parameter("RET") or "").upper() == "HDRS"

    def notify(self, position: int) -> frozenset[str]:
        """NOTIFY of one recipient: a subset of SUCCESS, FAILURE, DELAY, or NEVER alone.

        Without NOTIFY, RFC 3461 section 4.1 leaves it to the MTA; like Postfix, failures and
        delays are reported and successes are not."""
        value = self.recipient_parameter(position, "NOTIFY")
        if value is None:
            return _DEFAULT_NOTIFY
        return frozenset(part.strip().upper() for part in value.split(","))

    def original_recipient(self, position: int) -> str | None:
        """ORCPT as a DSN shows it ("rfc822; user@example.org"), decoded from xtext."""
        value = self.recipient_parameter(position, "ORCPT")
        if value is None:
            return None
        kind, _, address = value.partition(";")
        return f"{kind.strip()}; {xtext_decode(address.strip())}"

    def recipient_parameter(self, position: int, keyword: str) -> str | None:
        if position >= len(self.recipient_parameters):
            return None
        for key, value in self.recipient_parameters[position]:
            if key == keyword:
                return value
        return None

    def _mail_parameter(self, keyword: str) -> str | None:
        for key, value in self.mail_parameters:
            if key == keyword:
                return value
        return None

    def to_json(self) -> bytes:
        """The envelope as the spool record and the queue index store it: compact JSON.

        Every accepted message is encoded for its spool record, and again if it enters the
        queue index, so the JSON is written here around the standard library's string
        escaper, in a third of the time the general encoder takes. Its output is the general
        encoder's, byte for byte (a test holds it to that)."""
        string = _json_string
        recipients = ",".join(map(string, self.recipients))
        # Written only when it is not plain mail: records stay as they were for MAIL.
        mode = f',"mode":{string(self.mode)}' if self.mode != "mail" else ""
        return (
            f'{{"sender":{string(self.sender)},"recipients":[{recipients}],'
            f'"client_address":{string(self.client_address)},'
            f'"client_name":{string(self.client_name)},"helo":{string(self.helo)},'
            f'"protocol":{string(self.protocol)},"body_type":{string(self.body_type)},'
            f'"received_at":{_json_number(self.received_at)},'
            f'"mail_parameters":{_json_list(self.mail_parameters)},'
            f'"recipient_parameters":{_json_list(self.recipient_parameters)}{mode}}}'
        ).encode()

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
            recipient_parameters=tuple(
                tuple((str(k), None if v is None else str(v)) for k, v in parameters)
                for parameters in raw.get("recipient_parameters", [])
            ),
            # Records from before SEND, SOML and SAML existed have no mode: plain mail.
            mode=str(raw.get("mode", "mail")),
        )


_DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})
