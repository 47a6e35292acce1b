"""What a sender asks to be told about delivery (RFC 3461): NOTIFY, RET and ENVID.

The parameters go out only to a server that offers DSN; to one that does not, the message is
sent without them (RFC 3461 section 4 leaves the notifications to that server's defaults),
as Postfix's sendmail does.
"""

from __future__ import annotations

from dataclasses import dataclass

from pigeon.smtp import xtext_encode

__all__ = ["DsnRequest"]

_EVENTS = ("SUCCESS", "FAILURE", "DELAY")


@dataclass(frozen=True, slots=True)
class DsnRequest:
    notify: tuple[str, ...] = ()  # a subset of SUCCESS, FAILURE, DELAY; or ("NEVER",)
    ret: str | None = None  # "FULL" (the whole message back) or "HDRS" (its header)
    envid: str | None = None  # the sender's own name for this transaction

    @classmethod
    def parse(
        cls, notify: str | None = None, ret: str | None = None, envid: str | None = None
    ) -> DsnRequest:
        """From command-line words ("success,delay", "hdrs"); raises ValueError naming the
        problem."""
        events: tuple[str, ...] = ()
        if notify:
            events = tuple(e.strip().upper() for e in notify.split(","))
            if events != ("NEVER",) and (
                any(e not in _EVENTS for e in events) or len(set(events)) != len(events)
            ):
                raise ValueError(
                    f"notify: {notify!r}: give never, or success, failure and delay"
                    " joined by commas"
                )
        if ret is not None and ret.upper() not in ("FULL", "HDRS"):
            raise ValueError(f"ret: {ret!r}: give full or hdrs")
        if envid is not None and (not envid or len(xtext_encode(envid)) > 100):
            raise ValueError("envid: 1 to 100 characters (as sent, encoded)")
        return cls(events, None if ret is None else ret.upper(), envid)

    def mail_parameters(self) -> dict[str, str | None]:
        parameters: dict[str, str | None] = {}
        if self.ret is not None:
            parameters["RET"] = self.ret
        if self.envid is not None:
            parameters["ENVID"] = xtext_encode(self.envid)
        return parameters

    def rcpt_parameters(self, recipient: str) -> dict[str, str | None]:
        if not self.notify:
            return {}
        # ORCPT keeps the address as the sender gave it, for the report (section 4.2).
        kind = "rfc822" if recipient.isascii() else "utf-8"
        return {"NOTIFY": ",".join(self.notify), "ORCPT": f"{kind};{xtext_encode(recipient)}"}
