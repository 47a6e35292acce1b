"""pigeon.auth: the SASL mechanisms (server halves and SCRAM's client half), SASLprep, the
password hashes and the user store, with no network."""

from __future__ import annotations

import base64
import sqlite3
import stat
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from pigeon.auth import (
    Challenge,
    CheckPassword,
    Failure,
    LoginMechanism,
    NeedCredentials,
    PlainMechanism,
    SASLprepError,
    ScramClient,
    ScramCredentials,
    ScramError,
    ScramSha256Mechanism,
    Success,
    UserExists,
    UserStore,
    UserStoreError,
    hash_password,
    normalize_address,
    saslprep,
    server_mechanism,
    verify_password,
)

# RFC 7677 section 3: the SCRAM-SHA-256 exchange for user "user", password "pencil".
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


@pytest.fixture(scope="module")
def pencil() -> ScramCredentials:
    return ScramCredentials.from_password("pencil", salt=SALT, iterations=4096)


def scram_server(first: bytes, credentials: ScramCredentials | None) -> ScramSha256Mechanism:
    """A server half past the client-first message, the user's keys given."""
    mechanism = ScramSha256Mechanism(nonce=SERVER_NONCE)
    step = mechanism.respond(first)
    assert isinstance(step, NeedCredentials), step
    assert isinstance(mechanism.credentials(credentials), Challenge)
    return mechanism


# -- SCRAM-SHA-256: the RFC 7677 test vector -------------------------------------------------


def test_rfc7677_server_side(pencil: ScramCredentials) -> None:
    mechanism = ScramSha256Mechanism(nonce=SERVER_NONCE)
    assert mechanism.start() == Challenge(b"")
    assert mechanism.respond(CLIENT_FIRST) == NeedCredentials("user")
    assert mechanism.credentials(pencil) == Challenge(SERVER_FIRST)
    assert mechanism.respond(CLIENT_FINAL) == Challenge(SERVER_FINAL)
    # RFC 4954 section 4: the signature went out as a challenge; an empty line completes.
    assert mechanism.respond(b"") == Success("user")


def test_rfc7677_client_side() -> None:
    client = ScramClient("user", "pencil", nonce=CLIENT_NONCE)
    assert client.first() == CLIENT_FIRST
    assert client.final(SERVER_FIRST) == CLIENT_FINAL
    client.verify(SERVER_FINAL)


def test_client_refuses_a_server_that_does_not_know_the_password() -> None:
    client = ScramClient("user", "pencil", nonce=CLIENT_NONCE)
    client.final(SERVER_FIRST)
    with pytest.raises(ScramError, match="signature"):
        client.verify(b"v=" + base64.b64encode(b"\0" * 32))
    with pytest.raises(ScramError, match="refused"):
        client.verify(b"e=invalid-proof")


@pytest.mark.parametrize(
    ("server_first", "complaint"),
    [
        (b"r=someone-elses-nonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "nonce"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999", "iteration"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096", "lacks"),
        (b"m=must,r=rOprNGfwEbeRWgbNEkqOxyz,s=AAAA,i=4096", "extension"),
        (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096", "base64"),
    ],
)
def test_client_refuses_a_bad_server_first_message(server_first: bytes, complaint: str) -> None:
    client = ScramClient("user", "pencil", nonce=CLIENT_NONCE)
    with pytest.raises(ScramError, match=complaint):
        client.final(server_first)


def test_client_and_server_agree_with_fresh_nonces() -> None:
    credentials = ScramCredentials.from_password("correct horse")
    client = ScramClient("alice@example.test", "correct horse")
    server = ScramSha256Mechanism()
    assert server.respond(client.first()) == NeedCredentials("alice@example.test")
    challenge = server.credentials(credentials)
    assert isinstance(challenge, Challenge)
    signature = server.respond(client.final(challenge.data))
    assert isinstance(signature, Challenge)
    client.verify(signature.data)
    assert server.respond(b"") == Success("alice@example.test")


def test_wrong_password_fails_as_bad_credentials(pencil: ScramCredentials) -> None:
    client = ScramClient("user", "crayon", nonce=CLIENT_NONCE)
    server = ScramSha256Mechanism(nonce=SERVER_NONCE)
    server.respond(client.first())
    challenge = server.credentials(pencil)
    assert isinstance(challenge, Challenge)
    outcome = server.respond(client.final(challenge.data))
    assert isinstance(outcome, Failure)
    assert outcome.bad_credentials


def test_unknown_user_goes_on_until_the_proof_and_then_fails() -> None:
    """No such user: the server still answers with a salt, so the exchange does not tell."""
    client = ScramClient("nobody", "pencil")
    server = ScramSha256Mechanism()
    server.respond(client.first())
    challenge = server.credentials(None)
    assert isinstance(challenge, Challenge)
    assert b",s=" in challenge.data
    assert b",i=4096" in challenge.data
    outcome = server.respond(client.final(challenge.data))
    assert outcome == Failure("invalid credentials", bad_credentials=True)
    # Asked again, the same salt: a user who exists would not get a new one either.
    again = ScramSha256Mechanism()
    again.respond(ScramClient("nobody", "x").first())
    repeat = again.credentials(None)
    assert isinstance(repeat, Challenge)
    assert repeat.data.split(b",")[1] == challenge.data.split(b",")[1]


def test_channel_binding_required_by_the_client_is_refused() -> None:
    """Only SCRAM-SHA-256 is offered, not -PLUS: "p=" cannot be honoured (RFC 5802 6)."""
    outcome = ScramSha256Mechanism().respond(b"p=tls-exporter,,n=user,r=abcdef")
    assert isinstance(outcome, Failure)
    assert "channel binding" in outcome.reason
    assert not outcome.bad_credentials


def test_y_flag_is_welcome_and_must_be_repeated_in_c(pencil: ScramCredentials) -> None:
    """ "y": the client could bind but believes the server cannot, which is true here."""
    server = scram_server(b"y,,n=user,r=" + CLIENT_NONCE.encode(), pencil)
    # The c= attribute must carry the same GS2 header: "y,," is "eSws".
    final = CLIENT_FINAL.replace(b"c=biws", b"c=eSws")
    outcome = server.respond(final)
    # The proof was computed over c=biws, so it fails, but as credentials, not as binding.
    assert isinstance(outcome, Failure)
    assert outcome.bad_credentials


def test_c_attribute_must_match_the_gs2_header(pencil: ScramCredentials) -> None:
    server = scram_server(CLIENT_FIRST, pencil)
    outcome = server.respond(CLIENT_FINAL.replace(b"c=biws", b"c=eSws"))
    assert isinstance(outcome, Failure)
    assert "GS2 header" in outcome.reason


def test_the_combined_nonce_must_come_back(pencil: ScramCredentials) -> None:
    server = scram_server(CLIENT_FIRST, pencil)
    outcome = server.respond(CLIENT_FINAL.replace(b"k0,p=", b"k1,p="))
    assert outcome == Failure("wrong nonce")


@pytest.mark.parametrize(
    "first",
    [
        b"",  # nothing
        b"n,",  # no authzid field
        b"x,,n=user,r=abc",  # an unknown binding flag
        b"n,,r=abc,n=user",  # attributes out of order
        b"n,,n=user",  # no nonce
        b"n,,m=ext,n=user,r=abc",  # a mandatory extension
        b"n,,n=us=er,r=abc",  # a bare "=" in a saslname
        b"n,,n=,r=abc",  # an empty name
        b"n,,n=user,r=a,b",  # "b" is no attribute
        b"n,b=x,n=user,r=abc",  # an authzid that is not a=
        b"n,,n=user,r=\xff",  # not UTF-8
    ],
)
def test_malformed_client_first_messages(first: bytes) -> None:
    outcome = ScramSha256Mechanism().respond(first)
    assert isinstance(outcome, Failure)
    assert not outcome.bad_credentials


def test_saslname_escapes_are_decoded() -> None:
    assert ScramSha256Mechanism().respond(b"n,,n=a=2Cb=3Dc,r=xyz") == NeedCredentials("a,b=c")


def test_authorization_identity_must_be_the_user() -> None:
    assert ScramSha256Mechanism().respond(b"n,a=User,n=user,r=xyz") == NeedCredentials("user")
    outcome = ScramSha256Mechanism().respond(b"n,a=admin,n=user,r=xyz")
    assert isinstance(outcome, Failure)
    assert outcome.bad_credentials


def test_non_empty_answer_to_the_signature_fails(pencil: ScramCredentials) -> None:
    server = scram_server(CLIENT_FIRST, pencil)
    assert server.respond(CLIENT_FINAL) == Challenge(SERVER_FINAL)
    assert isinstance(server.respond(b"more"), Failure)


# -- PLAIN and LOGIN ---------------------------------------------------------------------------


def test_plain() -> None:
    mechanism = PlainMechanism()
    assert mechanism.start() == Challenge(b"")
    assert mechanism.respond(b"\0alice\0s3cret") == CheckPassword("alice", "s3cret")
    assert PlainMechanism().respond(b"alice\0alice\0pw") == CheckPassword("alice", "pw")
    assert PlainMechanism().respond("\0jos\u00e9\0p\u00e4ss".encode()) == CheckPassword(
        "jos\u00e9", "p\u00e4ss"
    )


@pytest.mark.parametrize("message", [b"", b"alice", b"\0alice", b"\0\0pw", b"a\0b\0c\0d", b"\xff"])
def test_plain_malformed(message: bytes) -> None:
    outcome = PlainMechanism().respond(message)
    assert isinstance(outcome, Failure)
    assert not outcome.bad_credentials


def test_plain_refuses_acting_for_someone_else() -> None:
    outcome = PlainMechanism().respond(b"admin\0alice\0pw")
    assert isinstance(outcome, Failure)
    assert outcome.bad_credentials


def test_login() -> None:
    mechanism = LoginMechanism()
    assert mechanism.start() == Challenge(b"Username:")
    assert mechanism.respond(b"alice") == Challenge(b"Password:")
    assert mechanism.respond(b"pw") == CheckPassword("alice", "pw")


def test_login_initial_response_is_the_user_name() -> None:
    mechanism = LoginMechanism()
    assert mechanism.respond(b"alice") == Challenge(b"Password:")
    assert mechanism.respond(b"") == CheckPassword("alice", "")
    assert isinstance(LoginMechanism().respond(b""), Failure)


def test_mechanisms_by_name() -> None:
    assert isinstance(server_mechanism("plain"), PlainMechanism)
    assert isinstance(server_mechanism("LOGIN"), LoginMechanism)
    assert isinstance(server_mechanism("Scram-Sha-256"), ScramSha256Mechanism)
    assert server_mechanism("CRAM-MD5") is None


# -- SASLprep (RFC 4013 section 3's examples) --------------------------------------------------


@pytest.mark.parametrize(
    ("given", "prepared"),
    [
        ("I\u00adX", "IX"),  # soft hyphen mapped to nothing
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),  # NFKC
        ("\u2168", "IX"),
        ("a\u00a0b", "a b"),  # non-ASCII space
    ],
)
def test_saslprep(given: str, prepared: str) -> None:
    assert saslprep(given) == prepared


@pytest.mark.parametrize("given", ["\u0007", "\u0627\u0031", "a\u0000b"])
def test_saslprep_prohibits(given: str) -> None:
    with pytest.raises(SASLprepError):
        saslprep(given)


# -- password hashes ---------------------------------------------------------------------------


def test_password_hash_round_trip() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$scrypt$ln=15,r=8,p=1$")
    assert "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret ", stored)
    assert hash_password("s3cret") != stored  # a fresh salt each time


def test_password_compared_after_saslprep() -> None:
    assert verify_password("I\u00adX", hash_password("IX"))


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plain",
        "$scrypt$ln=15,r=8$AAAA$AAAA",
        "$scrypt$ln=40,r=8,p=1$AAAA$AAAA",  # too dear to check
        "$scrypt$ln=4,r=8,p=1$!!$AAAA",
    ],
)
def test_unreadable_stored_hash_never_matches(stored: str) -> None:
    assert not verify_password("anything", stored)


# -- the user store ----------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    users = UserStore(tmp_path / "users.db")
    users.add("Alice@Example.TEST", "s3cret")
    return users


def test_store_add_and_check(store: UserStore) -> None:
    assert store.exists("alice@example.test")
    assert store.exists("ALICE@example.test")
    assert store.check_password("alice@example.test", "s3cret") == "alice@example.test"
    assert store.check_password("Alice@Example.Test", "s3cret") == "alice@example.test"
    assert store.check_password("alice@example.test", "wrong") is None
    assert store.check_password("nobody@example.test", "s3cret") is None
    store.close()


def test_store_keeps_scram_keys_not_the_password(store: UserStore, tmp_path: Path) -> None:
    credentials = store.scram_credentials("alice@example.test")
    assert credentials is not None
    assert credentials.iterations == 4096
    expected = ScramCredentials.from_password("s3cret", salt=credentials.salt)
    assert credentials == expected
    assert store.scram_credentials("nobody@example.test") is None
    store.close()
    assert b"s3cret" not in (tmp_path / "users.db").read_bytes()


def test_store_file_is_private_and_in_wal_mode(store: UserStore, tmp_path: Path) -> None:
    path = tmp_path / "users.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    store.close()


def test_store_sees_changes_made_by_another_process(store: UserStore, tmp_path: Path) -> None:
    """The server keeps its connection open; what the command writes it sees at once."""
    writer = UserStore(tmp_path / "users.db")
    writer.add("bob@example.test", "pw")
    assert store.exists("bob@example.test")
    writer.set_password("alice@example.test", "n3w")
    assert store.check_password("alice@example.test", "n3w") == "alice@example.test"
    writer.delete("bob@example.test")
    assert not store.exists("bob@example.test")
    writer.close()
    store.close()


def test_store_changes(store: UserStore) -> None:
    with pytest.raises(UserExists):
        store.add("alice@example.test", "again")
    with pytest.raises(UserStoreError, match="no such user"):
        store.set_password("nobody@example.test", "pw")
    with pytest.raises(UserStoreError, match="no such user"):
        store.delete("nobody@example.test")
    with pytest.raises(UserStoreError, match="empty"):
        store.add("carol@example.test", "")
    with pytest.raises(UserStoreError, match="unusable"):
        store.add("carol@example.test", "bell\u0007")
    store.add("carol@other.test", "pw")
    assert [u.address for u in store.list()] == ["alice@example.test", "carol@other.test"]
    store.close()


@pytest.mark.parametrize(
    "address", ["alice", "@example.test", "a/b@example.test", ".x@example.test", "a@-bad-", "a@"]
)
def test_store_refuses_addresses_that_cannot_be_mailboxes(address: str) -> None:
    with pytest.raises(UserStoreError):
        normalize_address(address)


# -- anything a client may send ----------------------------------------------------------------

FUZZ = hypothesis.settings(max_examples=200, deadline=None)


@FUZZ
@hypothesis.given(responses=st.lists(st.binary(max_size=200), max_size=4))
def test_mechanisms_take_any_bytes_without_raising(responses: list[bytes]) -> None:
    """Whatever the client sends, each step is a step, never an exception."""
    credentials = ScramCredentials(b"salt", 4096, b"\0" * 32, b"\1" * 32)
    for factory in (PlainMechanism, LoginMechanism, ScramSha256Mechanism):
        mechanism = factory()
        for response in responses:
            step = mechanism.respond(response)
            if isinstance(step, NeedCredentials):
                step = mechanism.credentials(credentials)
            assert isinstance(step, Challenge | CheckPassword | Failure | Success)
            if not isinstance(step, Challenge):
                break
