"""Configuration of listener roles and AUTH: defaults, what each role implies, and strict
errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeon.config import AuthConfig, Config, ConfigError, ListenerConfig, TLSConfig, load_config


def load_text(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "pigeon.toml"
    path.write_text(text)
    return load_config(path)


def test_defaults() -> None:
    listener = ListenerConfig()
    assert listener.role == "mx"
    assert listener.auth == "auto"
    assert listener.auth_plaintext == "loopback"
    assert listener.sender_login_match is True
    assert not listener.offers_auth  # AUTH is off on mx listeners unless asked for
    assert Config().auth == AuthConfig()
    assert Config().auth.mechanisms == ("SCRAM-SHA-256", "PLAIN", "LOGIN")
    assert Config().auth.failure_delay == 1.0
    assert Config(data_dir=Path("d")).users_db == Path("d/users.db")


def test_roles(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """
        [[listen]]
        address = "127.0.0.1:25"
        [[listen]]
        address = "127.0.0.1:587"
        role = "submission"
        auth_plaintext = "never"
        [[listen]]
        address = "127.0.0.1:465"
        role = "submissions"
        sender_login_match = false
        [[listen]]
        address = "127.0.0.1:26"
        auth = "on"
        [tls]
        certificate = "cert.pem"
        [auth]
        mechanisms = ["plain", "SCRAM-SHA-256"]
        failure_delay = 0.5
        """,
    )
    mx, submission, submissions, mx_auth = config.listen
    assert [lc.offers_auth for lc in config.listen] == [False, True, True, True]
    assert submission.auth_plaintext == "never"
    assert not submissions.sender_login_match
    # "submission" speaks STARTTLS with a certificate; "submissions" is implicit TLS.
    assert [config.listener_tls(lc) for lc in config.listen] == [
        "starttls",
        "starttls",
        "implicit",
        "starttls",
    ]
    assert config.auth == AuthConfig(mechanisms=("PLAIN", "SCRAM-SHA-256"), failure_delay=0.5)
    assert mx.role == "mx"
    assert mx_auth.auth == "on"


def test_submission_without_a_certificate_speaks_no_tls() -> None:
    config = Config(listen=(ListenerConfig(role="submission"),))
    assert config.listener_tls(config.listen[0]) == "none"


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('[[listen]]\nrole = "relay"', "listen[0].role: 'relay' is not one of mx, submission"),
        ('[[listen]]\nauth = "yes"', "listen[0].auth: 'yes' is not one of auto, on, off"),
        ('[[listen]]\nauth_plaintext = "lan"', "listen[0].auth_plaintext: 'lan'"),
        ("[[listen]]\nsender_login_match = 1", "listen[0].sender_login_match: expected true"),
        ('[[listen]]\nrole = "submission"\nauth = "off"', "listen[0].auth: a submission"),
        ('[[listen]]\nrole = "submissions"', "listen[0].role: 'submissions' is implicit TLS"),
        (
            '[[listen]]\nrole = "submissions"\ntls = "starttls"\n[tls]\ncertificate = "c.pem"',
            "listen[0].tls: a submissions listener speaks implicit TLS only",
        ),
        ('[auth]\nmechanisms = ["CRAM-MD5"]', "auth.mechanisms: 'CRAM-MD5' is not one of"),
        ("[auth]\nmechanisms = []", "auth.mechanisms: name each mechanism once"),
        ('[auth]\nmechanisms = ["PLAIN", "plain"]', "auth.mechanisms: name each mechanism once"),
        ("[auth]\nfailure_delay = -1", "auth.failure_delay: expected a number >= 0"),
        ('[auth]\nfailure_delay = "1s"', "auth.failure_delay: expected a number >= 0"),
        ("[auth]\ndelay = 1", "unknown setting auth.delay"),
        ("auth = 1", "auth: expected a table"),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert complaint in str(caught.value)


def test_a_certificate_satisfies_submissions(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[[listen]]\nrole = "submissions"\n[tls]\ncertificate = "c.pem"\n')
    assert config.tls == TLSConfig(certificate=tmp_path / "c.pem")
