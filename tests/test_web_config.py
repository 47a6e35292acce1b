"""The [web] table: documented in the example file, strictly loaded; and the SMTP log's
transcripts, which keep commands and replies but never message text or AUTH secrets."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pigeon.config import ConfigError, WebConfig, load_config
from pigeon.transcripts import TranscriptLog

EXAMPLE = Path(__file__).resolve().parent.parent / "pigeon.example.toml"


def test_the_example_file_documents_every_web_setting_with_its_default() -> None:
    with EXAMPLE.open("rb") as file:
        raw = tomllib.load(file)
    assert set(raw["web"]) == {f.name for f in fields(WebConfig)}
    assert load_config(EXAMPLE).web == WebConfig()
    assert WebConfig().address == "127.0.0.1:8025"  # loopback unless configured


def test_web_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        '[web]\nenabled = false\naddress = "[::1]:9000"\nadmins = ["Root@Example.TEST"]\n'
        "session_lifetime = 60\n"
    )
    assert load_config(path).web == WebConfig(
        enabled=False, address="[::1]:9000", admins=("root@example.test",), session_lifetime=60
    )


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[web]\nport = 1\n", "web.port"),
        ('[web]\nenabled = "yes"\n', "web.enabled"),
        ('[web]\naddress = "host:99999"\n', "web.address"),
        ("[web]\nadmins = 1\n", "web.admins"),
        ("[web]\nsession_lifetime = 0\n", "web.session_lifetime"),
    ],
)
def test_bad_web_settings_are_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "pigeon.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(path)


def transcript(exchange: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
    log = TranscriptLog()
    recorder = log.open("1", "192.0.2.1:1234")
    for side, data in exchange:
        (recorder.client if side == ">" else recorder.server)(data)
    recorder.end()
    assert log.recent()[0].ended is not None
    return log.recent()[0].lines


# A greeting, then AUTH LOGIN with a user name and password that must never be shown.
_LOGIN = [
    ("<", b"220 mx ESMTP\r\n"),
    (">", b"EHLO c\r\n"),
    ("<", b"250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
    (">", b"AUTH LOGIN\r\n"),
    ("<", b"334 VXNlcm5hbWU6\r\n"),
    (">", b"YWxpY2U=\r\n"),
    ("<", b"334 UGFzc3dvcmQ6\r\n"),
    (">", b"c2VjcmV0\r\n"),
    ("<", b"235 2.7.0 ok\r\n"),
]


def test_a_transcript_masks_auth_and_counts_message_text_instead_of_showing_it() -> None:
    lines = transcript(
        [
            *_LOGIN,
            (">", b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n"),
            ("<", b"250 ok\r\n550 no\r\n354 go\r\n"),
            (">", b"Subject: secret plans\r\n\r\nbody\r\n.\r\nQUIT\r\n"),
            ("<", b"250 queued\r\n221 bye\r\n"),
        ]
    )
    shown = [text for _, text in lines]
    assert "AUTH LOGIN" in shown
    assert "YWxpY2U=" not in shown
    assert "c2VjcmV0" not in shown
    assert shown.count("****") == 2
    assert not any("secret plans" in text for text in shown)
    assert any(text.startswith("[message text:") for text in shown)
    assert shown[-2:] == ["250 queued", "221 bye"]
    assert ("<", "550 no") in lines


_EXCHANGE = [
    *_LOGIN,
    (">", b"MAIL FROM:<a@x>\r\n"),
    ("<", b"250 ok\r\n"),
    (">", b"RCPT TO:<b@y>\r\nDATA\r\n"),
    ("<", b"250 ok\r\n354 go\r\n"),
    (">", b"Subject: x\r\n\r\nbody\n\r\n.\r\n"),
    ("<", b"250 queued \xff as \xe2\x82\r\n"),
    (">", b"BDAT 4 LAST\r\nabcdNOOP\r\n"),
    ("<", b"250 4 octets\r\n250 ok\r\n"),
    (">", b"NOOP\n"),
    ("<", b"250 bare\n250 cr\r\r\n"),
    (">", b"QUIT\r\n"),
    ("<", b"221 bye\r\n"),
]


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=64), min_size=len(_EXCHANGE)))
def test_a_transcript_does_not_depend_on_how_the_bytes_arrive(cuts: list[int]) -> None:
    """Whole lines take a short way through the recorder, pieces the long one: both read the
    same lines (bare LF, CR before CRLF and invalid UTF-8 included)."""
    pieces = []
    for (side, data), cut in zip(_EXCHANGE, cuts, strict=False):
        at = min(cut, len(data))
        pieces += [(side, part) for part in (data[:at], data[at:]) if part]
    assert transcript(pieces) == transcript(_EXCHANGE)


def test_a_transcript_skips_bdat_chunks_and_hides_an_initial_auth_response() -> None:
    lines = transcript(
        [
            (">", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"),
            ("<", b"235 ok\r\n"),
            (">", b"BDAT 10 LAST\r\nSubject: xQUIT\r\n"),
            ("<", b"250 10 octets\r\n221 bye\r\n"),
        ]
    )
    shown = [text for _, text in lines]
    assert shown[0] == "AUTH PLAIN ****"
    assert "[chunk: 10 octets]" in shown
    assert "QUIT" in shown
    assert not any("Subject" in text for text in shown)
