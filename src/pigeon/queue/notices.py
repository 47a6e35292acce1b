"""Who is told what after a delivery attempt: the decision behind every delivery status
notification (RFC 3464), from the recipients' NOTIFY requests (RFC 3461).

Failures and delays are reported unless NOTIFY says otherwise; successes only when asked,
and not when the next hop took the request along (it reports then). A notification for a
message with the null sender (a bounce) is never sent to that sender: a failure goes to the
postmaster instead (RFC 5321 section 6.1), and a failure of the postmaster's own copy is
only logged. The report itself is built by ``pigeon.bounce``; sending it is the scheduler's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from pigeon.bounce import Action, RecipientStatus
from pigeon.delivery.result import DeliveryResult

from .envelope import Envelope

__all__ = ["Notice", "dropped_double_bounce", "plan_notice"]

Results = Sequence[tuple[int, DeliveryResult]]  # (recipient position, result)


@dataclass(frozen=True, slots=True)
class Notice:
    to: str
    statuses: list[RecipientStatus]
    warning: bool  # only delays: a "still trying" report, not a bounce


def plan_notice(
    envelope: Envelope,
    *,
    failed: Results,
    delivered: Results,
    delayed: Results,
    postmaster: str | None,
    max_lifetime: float,
    now: float,
) -> Notice | None:
    """The one report this attempt calls for, or None (nothing asked for, or a double
    bounce with no postmaster to take it: ``dropped_double_bounce`` tells those apart)."""
    statuses: list[RecipientStatus] = []

    def status(position: int, result: DeliveryResult, action: Action) -> RecipientStatus:
        return RecipientStatus(
            result.recipient,
            action,
            result.status,
            result.detail,
            result.remote_mta or None,
            envelope.original_recipient(position),
            last_attempt=now,
        )

    for position, result in failed:
        if "FAILURE" in envelope.notify(position):
            statuses.append(status(position, result, Action.FAILED))
    for position, result in delayed:
        if "DELAY" in envelope.notify(position):
            statuses.append(status(position, result, Action.DELAYED))
    for position, result in delivered:
        if "SUCCESS" not in envelope.notify(position) or result.dsn_passed_on:
            continue  # the next hop, which took NOTIFY along, will report success
        if result.expanded:
            action = Action.EXPANDED  # sent on to the addresses it stands for
        else:
            # RFC 3461 section 6.2.3: "relayed" when the next hop cannot report success.
            action = Action.RELAYED if result.remote_mta else Action.DELIVERED
        statuses.append(status(position, result, action))
    if not statuses:
        return None
    warning = all(s.action is Action.DELAYED for s in statuses)
    to = envelope.sender
    if not to:
        failures = [s for s in statuses if s.action is Action.FAILED]
        if not failures or postmaster is None or postmaster in envelope.recipients:
            return None
        to, statuses = postmaster, failures
    if warning:
        until = envelope.received_at + max_lifetime
        statuses = [replace(s, will_retry_until=until) for s in statuses]
    return Notice(to, statuses, warning)


def dropped_double_bounce(envelope: Envelope, failed: Results) -> bool:
    """Whether ``plan_notice`` said nothing because a bounce's failure had nowhere to go."""
    return not envelope.sender and any("FAILURE" in envelope.notify(p) for p, _ in failed)
