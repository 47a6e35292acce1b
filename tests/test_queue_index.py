"""The queue index on its own: rows in, states changed, requests taken, rows forgotten; and
the envelope's DSN fields it stores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from pigeon.queue import Envelope, QueueIndex, QueueIndexError, RecipientState
from pigeon.queue.envelope import MAIL_MODES
from pigeon.queue.index import IndexChanges, RecipientUpdate, RequestAction
from pigeon.queue.spool import SpooledMessage
from pigeon.smtp import xtext_decode, xtext_encode


def spooled(queue_id: str, *recipients: str, arrival: float = 1000.0) -> SpooledMessage:
    envelope = Envelope(
        "carol@example.test",
        recipients,
        received_at=arrival,
        recipient_parameters=tuple((("NOTIFY", "SUCCESS"),) for _ in recipients),
    )
    return SpooledMessage(queue_id, envelope, 120, "w0-00000001.seg", 20, 200)


def test_rows_states_history_and_forgetting(tmp_path: Path) -> None:
    with QueueIndex(tmp_path / "queue.db") as index:
        index.apply(
            IndexChanges(
                added=[
                    (spooled("Q2", "a@x.test", arrival=2000.0), "w0"),
                    (spooled("Q1", "b@x.test", "c@y.test"), "w0"),
                ]
            ),
            now=1500.0,
        )
        index.apply(
            IndexChanges(
                updates=[
                    RecipientUpdate("Q1", 0, RecipientState.DELIVERED, None, "2.0.0", "ok"),
                    RecipientUpdate("Q1", 1, RecipientState.DEFERRED, 1800.0, "4.4.1", "down"),
                ]
            ),
            now=1600.0,
        )
        index.apply(
            IndexChanges(updates=[RecipientUpdate("Q1", 1, RecipientState.HELD, attempted=False)])
        )
        first, second = index.messages()
        assert [first.queue_id, second.queue_id] == ["Q1", "Q2"]  # by arrival
        assert first.spooled() == spooled("Q1", "b@x.test", "c@y.test")
        b, c = first.recipients
        assert (b.state, b.attempts, b.status, b.last_reply) == ("delivered", 1, "2.0.0", "ok")
        # A hold keeps the last reply and is not an attempt.
        assert (c.state, c.attempts, c.last_reply, c.domain) == ("held", 1, "down", "y.test")
        assert [(a.address, a.outcome) for a in index.attempts("Q1")] == [
            ("b@x.test", "delivered"),
            ("c@y.test", "deferred"),
        ]
        assert index.count() == {"delivered": 1, "held": 1, "queued": 1}
        index.apply(IndexChanges(done=["Q1"]))
        done = index.message("Q1")
        assert done is not None
        assert done.done
        index.apply(IndexChanges(forgotten=["Q1"]))
        assert index.message("Q1") is None
        assert index.attempts("Q1") == []  # the history goes with the message
        assert [m.queue_id for m in index.messages(owner="w0")] == ["Q2"]


def test_first_states_written_with_the_rows_match_an_update_after_them(tmp_path: Path) -> None:
    """A batch that adds a message and sets its recipients' first states (held mail does)
    writes each row once; the index must read exactly as if the update had come after."""

    def batch() -> IndexChanges:
        return IndexChanges(
            added=[(spooled("Q1", "a@x.test", "b@y.test", "c@z.test"), "w0")],
            updates=[
                RecipientUpdate(
                    "Q1", 0, RecipientState.HELD, None, "4.3.2", "held for ATRN", attempted=False
                ),
                RecipientUpdate("Q1", 1, RecipientState.DEFERRED, 1800.0, "4.4.1", "down"),
                RecipientUpdate("Q1", 2, RecipientState.HELD, attempted=False),
                RecipientUpdate("Q1", 2, RecipientState.QUEUED, attempted=False),
            ],
        )

    def rows(index: QueueIndex) -> list[tuple[object, ...]]:
        (message,) = index.messages()
        return [
            (r.state, r.attempts, r.next_attempt, r.status, r.last_reply, r.updated)
            for r in message.recipients
        ]

    with QueueIndex(tmp_path / "one.db") as one, QueueIndex(tmp_path / "two.db") as two:
        one.apply(batch(), now=1500.0)
        split = batch()
        two.apply(IndexChanges(added=split.added), now=1500.0)
        two.apply(IndexChanges(updates=split.updates), now=1500.0)
        assert rows(one) == rows(two)
        assert [state for state, *_ in rows(one)] == ["held", "deferred", "queued"]
        assert [a.position for a in one.attempts("Q1")] == [1]  # a hold is no attempt
        # but says why it holds; a request's update, with no status, says nothing.
        assert rows(one)[0] == ("held", 0, None, "4.3.2", "held for ATRN", 1500.0)
        assert rows(one)[2][3:5] == ("", "")
        # Added again (a restart that did not know the rows): rows there take the new state.
        again = IndexChanges(
            added=[(spooled("Q1", "a@x.test", "b@y.test", "c@z.test"), "w0")],
            updates=[RecipientUpdate("Q1", 2, RecipientState.HELD, attempted=False)],
        )
        one.apply(again, now=1600.0)
        assert [state for state, *_ in rows(one)] == ["held", "deferred", "held"]
        assert rows(one)[0][3:5] == ("4.3.2", "held for ATRN")  # kept: nothing said otherwise
        assert rows(one)[1][1] == 1  # the deferred recipient keeps its attempt
        # Added again with an attempt: counted on top of the one before, with its reply.
        attempt = RecipientUpdate("Q1", 1, RecipientState.DEFERRED, 2400.0, "4.4.2", "slow")
        one.apply(IndexChanges(added=again.added, updates=[attempt]), now=1700.0)
        assert rows(one)[1] == ("deferred", 2, 2400.0, "4.4.2", "slow", 1700.0)
        assert [a.status for a in one.attempts("Q1")] == ["4.4.1", "4.4.2"]
        # Added again and held for ATRN: the hold's reason replaces the last reply, with no
        # attempt counted and none in the history.
        hold = RecipientUpdate("Q1", 1, RecipientState.HELD, None, "4.3.2", "held", attempted=False)
        one.apply(IndexChanges(added=again.added, updates=[hold]), now=1800.0)
        assert rows(one)[1] == ("held", 2, None, "4.3.2", "held", 1800.0)
        assert len(one.attempts("Q1")) == 2


@pytest.mark.parametrize("count", [1, 2, 35, 127, 200])
def test_a_large_batch_reads_as_one_message_at_a_time(tmp_path: Path, count: int) -> None:
    """Rows go in many to a statement: every count of messages must come out whole."""

    def batches() -> list[IndexChanges]:
        return [
            IndexChanges(
                added=[(spooled(f"Q{n:04d}", "a@x.test", f"b{n}@y.test"), "w0")],
                updates=[
                    RecipientUpdate(f"Q{n:04d}", 1, RecipientState.HELD, None, "4.3.2", "held")
                ]
                if n % 3
                else [],
            )
            for n in range(count)
        ]

    def dump(index: QueueIndex) -> list[tuple[object, ...]]:
        return [
            (m.queue_id, m.spooled(), r.address, r.state, r.attempts, r.status, r.last_reply)
            for m in index.messages()
            for r in m.recipients
        ] + [
            (a.address, a.outcome, a.status)
            for m in index.messages()
            for a in index.attempts(m.queue_id)
        ]

    with QueueIndex(tmp_path / "one.db") as one, QueueIndex(tmp_path / "many.db") as many:
        whole = IndexChanges()
        for batch in batches():
            whole.added += batch.added
            whole.updates += batch.updates
            many.apply(batch, now=1500.0)
        one.apply(whole, now=1500.0)
        assert dump(one) == dump(many)
        assert len(one.messages()) == count
        unheld = len(range(0, count, 3))  # messages whose second recipient stays queued
        expected = {"queued": count + unheld, "held": count - unheld}
        assert one.count() == {state: n for state, n in expected.items() if n}
        # Every other message done, then all but the last forgotten, in one batch each.
        ids = [m.queue_id for m in one.messages()]
        one.apply(IndexChanges(warned=ids, done=ids[::2]))
        assert [(m.warned, m.done) for m in one.messages()] == [
            (True, n % 2 == 0) for n in range(count)
        ]
        one.apply(IndexChanges(forgotten=ids[:-1]))
        assert [m.queue_id for m in one.messages()] == ids[-1:]
        assert all(one.attempts(q) == [] for q in ids[:-1])


def test_requests_go_to_the_owner_and_are_taken_once(tmp_path: Path) -> None:
    with QueueIndex(tmp_path / "queue.db") as index:
        index.apply(
            IndexChanges(
                added=[(spooled("Q1", "a@x.test"), "w0"), (spooled("Q2", "b@x.test"), "w1")]
            )
        )
        assert index.add_request(RequestAction.HOLD, queue_id="Q2") == ["w1"]
        assert index.add_request(RequestAction.HOLD, queue_id="nope") == []
        assert index.add_request(RequestAction.FLUSH, domain="X.test", owners=["w2"]) == [
            "w0",
            "w1",
            "w2",
        ]
        taken = index.take_requests("w1")
        assert [(r.action, r.queue_id, r.domain) for r in taken] == [
            (RequestAction.HOLD, "Q2", None),
            (RequestAction.FLUSH, None, "x.test"),
        ]
        assert index.take_requests("w1") == []
        # A worker that adopts another's spool takes its rows and its requests.
        assert index.claim("w2", "w0") == 0
        assert [r.owner for r in index.pending_requests()] == ["w0", "w0"]
        assert index.claim("w1", "w0") == 1
        assert index.owners() == ["w0"]


def test_readonly_never_creates_and_damage_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    with pytest.raises(QueueIndexError, match="no queue index"):
        QueueIndex(path, readonly=True)
    assert not path.exists()
    QueueIndex(path).close()
    with QueueIndex(path, readonly=True) as index, pytest.raises(QueueIndexError, match="readonly"):
        index.apply(IndexChanges(added=[(spooled("Q1", "a@x.test"), "w0")]))
    path.write_bytes(b"\0garbage" * 512)
    with pytest.raises(QueueIndexError, match=r"cannot be opened.*mv .*queue\.db\.broken"):
        QueueIndex(path)


def test_envelope_dsn_fields_survive_the_spool_format() -> None:
    envelope = Envelope(
        "carol@example.test",
        ("a@x.test", "b@x.test"),
        mail_parameters=(("RET", "HDRS"), ("ENVID", "id+2B1")),
        recipient_parameters=(
            (("NOTIFY", "SUCCESS,DELAY"), ("ORCPT", "rfc822;A+40x.test")),
            (),
        ),
    )
    again = Envelope.from_json(envelope.to_json())
    assert again == envelope
    assert again.envelope_id == "id+1"
    assert again.return_headers_only
    assert again.notify(0) == {"SUCCESS", "DELAY"}
    assert again.notify(1) == {"FAILURE", "DELAY"}  # no NOTIFY: failures and delays
    assert again.original_recipient(0) == "rfc822; A@x.test"
    assert again.original_recipient(1) is None
    # Spool records written before recipient parameters existed still read.
    old = Envelope.from_json(b'{"sender": "", "recipients": ["a@x.test"]}')
    assert old.notify(0) == {"FAILURE", "DELAY"}


def general_json(envelope: Envelope) -> bytes:
    """The envelope through the standard library's general encoder, as it was first stored."""
    fields = {
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "client_address": envelope.client_address,
        "client_name": envelope.client_name,
        "helo": envelope.helo,
        "protocol": envelope.protocol,
        "body_type": envelope.body_type,
        "received_at": envelope.received_at,
        "mail_parameters": [list(p) for p in envelope.mail_parameters],
        "recipient_parameters": [[list(p) for p in ps] for ps in envelope.recipient_parameters],
    }
    if envelope.mode != "mail":
        fields["mode"] = envelope.mode
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


PARAMETERS = st.lists(st.tuples(st.text(), st.none() | st.text()), max_size=3).map(tuple)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    envelope=st.builds(
        Envelope,
        sender=st.text(),
        recipients=st.lists(st.text(), max_size=3).map(tuple),
        client_address=st.text(),
        client_name=st.text(),
        helo=st.text(),
        protocol=st.text(),
        body_type=st.text(),
        # Whole seconds too, as far as a float holds them exactly: the envelope keeps a float.
        received_at=st.floats() | st.integers(min_value=-(2**53), max_value=2**53),
        mail_parameters=PARAMETERS,
        recipient_parameters=st.lists(PARAMETERS, max_size=3).map(tuple),
        mode=st.sampled_from(MAIL_MODES),
    )
)
def test_envelope_json_is_the_general_encoders(envelope: Envelope) -> None:
    """The envelope's own JSON writer (quotes, control characters, any Unicode, NaN) must
    write what the general encoder writes, and read back as the envelope it was."""
    data = envelope.to_json()
    assert data == general_json(envelope)
    if math.isfinite(envelope.received_at):
        assert Envelope.from_json(data) == envelope


@pytest.mark.parametrize("text", ["plain", "a+b=c", "tab\there", "jöran@bücher.test", "+2B"])
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert encoded.isascii()
    assert "=" not in encoded
    assert xtext_decode(encoded) == text
