"""Per-recipient results: a refused recipient never hides the others' success."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RecipientResult", "SendResult"]


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What happened to one recipient: the reply that decided it, and from where.

    ``code`` is the SMTP reply code (250 when the message was accepted for this recipient;
    the RCPT, MAIL or end-of-DATA refusal otherwise). Errors found before any server said
    anything (a connection that failed, a null MX) carry the code the failure would have as a
    reply, so scripts can treat every result alike."""

    recipient: str
    code: int
    status: str | None
    text: str
    server: str = ""

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def describe(self) -> str:
        status = f" {self.status}" if self.status else ""
        where = f" ({self.server})" if self.server else ""
        return f"<{self.recipient}>: {self.code}{status} {self.text}{where}"


@dataclass(frozen=True, slots=True)
class SendResult:
    recipients: tuple[RecipientResult, ...]

    @property
    def all_accepted(self) -> bool:
        return all(r.accepted for r in self.recipients)

    @property
    def accepted(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.accepted)

    @property
    def refused(self) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if not r.accepted)

    def __getitem__(self, recipient: str) -> RecipientResult:
        for result in self.recipients:
            if result.recipient == recipient:
                return result
        raise KeyError(recipient)
