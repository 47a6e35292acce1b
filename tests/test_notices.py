"""Who is told what after an attempt (pigeon.queue.notices), from the recipients' NOTIFY."""

from __future__ import annotations

from pigeon.bounce import Action
from pigeon.delivery.result import DeliveryResult, Outcome
from pigeon.queue import Envelope
from pigeon.queue.notices import Notice, dropped_double_bounce, plan_notice

FAILED = DeliveryResult("a@x.test", Outcome.FAILED, "5.1.1", "no such user")
LATE = DeliveryResult("b@x.test", Outcome.DEFERRED, "4.4.1", "no answer")
DELIVERED = DeliveryResult("c@x.test", Outcome.DELIVERED, "2.0.0", "delivered to maildir")
RELAYED = DeliveryResult("c@x.test", Outcome.DELIVERED, "2.0.0", "ok", remote_mta="mx.x.test")


def envelope(sender: str = "s@y.test", *notify: str | None) -> Envelope:
    parameters = tuple(() if n is None else (("NOTIFY", n),) for n in notify)
    recipients = ("a@x.test", "b@x.test", "c@x.test")[: len(parameters)] or ("a@x.test",)
    return Envelope(sender, recipients, received_at=100.0, recipient_parameters=parameters)


def plan(env: Envelope, **results: list[tuple[int, DeliveryResult]]) -> Notice | None:
    return plan_notice(
        env,
        failed=results.get("failed", []),
        delivered=results.get("delivered", []),
        delayed=results.get("delayed", []),
        postmaster="postmaster@y.test",
        max_lifetime=1000.0,
        now=500.0,
    )


def test_failures_and_delays_by_default_successes_when_asked() -> None:
    notice = plan(
        envelope("s@y.test", None, None, None),
        failed=[(0, FAILED)],
        delayed=[(1, LATE)],
        delivered=[(2, DELIVERED)],
    )
    assert notice is not None
    assert [(s.recipient, s.action) for s in notice.statuses] == [
        ("a@x.test", Action.FAILED),
        ("b@x.test", Action.DELAYED),
    ]
    assert (notice.to, notice.warning) == ("s@y.test", False)
    asked = plan(envelope("s@y.test", None, None, "SUCCESS"), delivered=[(2, RELAYED)])
    assert asked is not None
    assert [s.action for s in asked.statuses] == [Action.RELAYED]


def test_never_means_nothing_and_delay_only_is_a_warning() -> None:
    assert plan(envelope("s@y.test", "NEVER"), failed=[(0, FAILED)]) is None
    warning = plan(envelope("s@y.test", None, "DELAY"), delayed=[(1, LATE)])
    assert warning is not None
    assert warning.warning
    assert warning.statuses[0].will_retry_until == 1100.0


def test_a_bounce_that_fails_goes_to_the_postmaster_once() -> None:
    bounce = envelope("", None)
    notice = plan(bounce, failed=[(0, FAILED)])
    assert notice is not None
    assert notice.to == "postmaster@y.test"
    to_postmaster = Envelope("", ("postmaster@y.test",), received_at=1.0)
    assert plan(to_postmaster, failed=[(0, FAILED)]) is None
    assert dropped_double_bounce(to_postmaster, [(0, FAILED)])
    assert plan(bounce, delayed=[(0, LATE)]) is None  # nobody is warned about a late bounce
    assert not dropped_double_bounce(bounce, [])
