"""pigeon.config: the example file, the defaults, host:port parsing and strict loading."""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from pigeon.config import (
    AuthConfig,
    Config,
    ConfigError,
    DirectoryConfig,
    DomainConfig,
    ExtensionsConfig,
    Limits,
    ListConfig,
    ListenerConfig,
    OdmrConfig,
    QueueConfig,
    TLSConfig,
    UserConfig,
    load_config,
    parse_host_port,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "pigeon.example.toml"


def field_names(cls: type[Any]) -> set[str]:
    return {f.name for f in fields(cls)}


def write(tmp_path: Path, text: str, name: str = "pigeon.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


# -- the example file documents every setting -------------------------------------------------


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert config.hostname == "mx.example.test"
    assert config.data_dir == EXAMPLE.parent / "pigeon-data"
    assert config.listen == (ListenerConfig(address="127.0.0.1:2525"),)
    assert config.domains == {"example.test": DomainConfig(users=("alice", "bob"))}


def test_example_file_names_every_setting_and_no_other() -> None:
    with EXAMPLE.open("rb") as file:
        raw = tomllib.load(file)
    assert set(raw) == field_names(Config)
    assert len(raw["listen"]) >= 1
    for listener in raw["listen"]:
        assert set(listener) == field_names(ListenerConfig)
    assert raw["domains"]
    for domain in raw["domains"].values():
        assert set(domain) == field_names(DomainConfig)
    assert set(raw["limits"]) == field_names(Limits)
    assert set(raw["tls"]) == field_names(TLSConfig)
    assert set(raw["extensions"]) == field_names(ExtensionsConfig)
    assert set(raw["auth"]) == field_names(AuthConfig)
    assert set(raw["queue"]) == field_names(QueueConfig)
    assert set(raw["directory"]) == field_names(DirectoryConfig)
    for user in raw["users"].values():
        assert set(user) == field_names(UserConfig)
    for mailing_list in raw["lists"].values():
        assert set(mailing_list) == field_names(ListConfig)
    for held in raw["odmr"].values():
        assert set(held) == field_names(OdmrConfig)
    assert raw["aliases"]


def test_example_file_shows_the_defaults() -> None:
    """The file says "what is left out takes the value shown here as the default"."""
    config = load_config(EXAMPLE)
    defaults = Config()
    assert config.limits == defaults.limits
    assert config.listen == defaults.listen
    assert config.trusted_networks == defaults.trusted_networks
    assert config.resolver == defaults.resolver
    assert config.data_dir.name == defaults.data_dir.name
    assert config.tls == defaults.tls
    assert config.extensions == defaults.extensions
    assert config.auth == defaults.auth
    assert config.queue == defaults.queue
    assert config.directory == defaults.directory
    (user,) = config.users.values()
    assert (user.quota, user.forward, user.moved_to) == (0, (), "")


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_are_a_local_catch_all_server_relaying_for_nobody() -> None:
    config = Config()
    assert config.hostname == "localhost"
    assert config.data_dir == Path("pigeon-data")
    assert config.spool_dir == Path("pigeon-data/spool")
    assert config.mail_dir == Path("pigeon-data/mail")
    assert config.listen == (ListenerConfig(),)
    listener = config.listen[0]
    assert listener.address == "127.0.0.1:2525"
    assert listener.host_port == ("127.0.0.1", 2525)
    assert (listener.compat, listener.vrfy, listener.expn) == ("rfc5321", "auto", "auto")
    assert (listener.vrfy_policy, listener.expn_policy) == ("hidden", "off")
    assert listener.bare_line_ends == "reject"
    assert config.domains == {"localhost": DomainConfig(users=(), catch_all=True)}
    assert config.trusted_networks == ()
    assert config.resolver == ()


def test_default_limits() -> None:
    limits = Config().limits
    assert limits == Limits()
    assert limits.message_size == 25 * 1024 * 1024
    assert limits.recipients == 1000
    assert limits.connections == 1000
    assert limits.errors == 10
    assert limits.command_timeout == 300.0  # RFC 5321 section 4.5.3.2.7: at least 5 minutes
    assert limits.data_timeout == 600.0
    assert limits.min_free_disk == 100 * 1024 * 1024
    assert limits.shutdown_grace == 30.0


def test_no_file_means_defaults() -> None:
    assert load_config(None) == Config()


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == Config()


def test_defaults_are_not_shared_between_configs() -> None:
    first, second = Config(), Config()
    assert first.domains == second.domains
    assert first.domains is not second.domains


def test_with_overrides_replaces_only_what_is_named() -> None:
    config = Config().with_overrides(hostname="mx.example.test")
    assert config.hostname == "mx.example.test"
    assert config.listen == Config().listen


# -- parse_host_port --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("mx.example.test:25", ("mx.example.test", 25)),
        ("[::1]:25", ("::1", 25)),
        ("[2001:db8::1]:587", ("2001:db8::1", 587)),
        ("[::1]", ("::1", 53)),
        ("mx.example.test", ("mx.example.test", 53)),
        ("192.0.2.1", ("192.0.2.1", 53)),
        (":2525", ("0.0.0.0", 2525)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("127.0.0.1:65535", ("127.0.0.1", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=53) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1:65536",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:",
        "127.0.0.1:smtp",
        "127.0.0.1: 25",
        "[::1]:x",
        "[::1]25",
        "[::1",
        "[::1]:",
        "127.0.0.1:\u00b2",  # SUPERSCRIPT TWO: str.isdigit() is true, int() refuses it
    ],
)
def test_parse_host_port_refuses_bad_ports(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_host_port(text, default_port=25)
    assert repr(text) in str(error.value)


# -- loading ----------------------------------------------------------------------------------

FULL = """
hostname = "mx.example.test"
data_dir = "data"
trusted_networks = ["192.0.2.0/24", "2001:db8::/32"]
resolver = ["127.0.0.1:5353"]

[[listen]]
address = "127.0.0.1:0"
compat = "rfc821"
vrfy = "on"
expn = "on"
bare_line_ends = "keep"

[[listen]]
address = "[::1]:587"

[domains."Example.TEST"]
users = ["alice", "Bob"]

[domains."other.test"]
catch_all = true

[limits]
message_size = 1000
recipients = 5
connections = 7
errors = 3
command_timeout = 1.5
data_timeout = 2
min_free_disk = 0
shutdown_grace = 0.25
"""


def test_every_setting_is_read(tmp_path: Path) -> None:
    config = load_text(tmp_path, FULL)
    assert config == Config(
        hostname="mx.example.test",
        data_dir=tmp_path / "data",
        listen=(
            ListenerConfig(
                address="127.0.0.1:0", compat="rfc821", vrfy="on", expn="on", bare_line_ends="keep"
            ),
            ListenerConfig(address="[::1]:587"),
        ),
        domains={
            "example.test": DomainConfig(users=("alice", "Bob")),
            "other.test": DomainConfig(catch_all=True),
        },
        trusted_networks=("192.0.2.0/24", "2001:db8::/32"),
        resolver=("127.0.0.1:5353",),
        limits=Limits(
            message_size=1000,
            recipients=5,
            connections=7,
            errors=3,
            command_timeout=1.5,
            data_timeout=2,
            min_free_disk=0,
            shutdown_grace=0.25,
        ),
    )


def test_settings_left_out_keep_their_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, 'hostname = "mx.example.test"\n[limits]\nrecipients = 5\n')
    assert config == Config(hostname="mx.example.test", limits=Limits(recipients=5))


def test_relative_data_dir_is_taken_from_the_files_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc" / "pigeon"
    conf_dir.mkdir(parents=True)
    config = load_config(write(conf_dir, 'data_dir = "../../var/pigeon"\n'))
    assert config.data_dir == conf_dir / "../../var/pigeon"
    assert config.data_dir.resolve() == (tmp_path / "var" / "pigeon").resolve()
    assert config.spool_dir == config.data_dir / "spool"


def test_relative_data_dir_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write(conf_dir, 'data_dir = "d"\n')
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("..") / "conf" / "pigeon.toml")
    assert config.data_dir.resolve() == (conf_dir / "d").resolve()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "somewhere"
    config = load_text(tmp_path, f'data_dir = "{target.as_posix()}"\n')
    assert config.data_dir == target


def test_domain_names_are_lowercased(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[domains."MiXeD.Example"]\nusers = ["Alice"]\n')
    assert config.domains == {"mixed.example": DomainConfig(users=("Alice",))}


def test_a_file_with_domains_replaces_the_default_domain(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[domains."example.test"]\nusers = ["alice"]\n')
    assert "localhost" not in config.domains


def test_whole_numbers_are_accepted_for_seconds(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[limits]\ncommand_timeout = 60\n")
    assert config.limits.command_timeout == 60


# -- refusals: each names the file and the key ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("bogus = 1\n", ["unknown setting bogus"]),
        ("[limits]\nbogus = 1\n", ["unknown setting limits.bogus"]),
        ('[[listen]]\naddress = "127.0.0.1:0"\nport = 25\n', ["unknown setting listen[0].port"]),
        ('[domains."example.test"]\nuser = ["a"]\n', ["domains.example.test.user"]),
        ("hostname = 25\n", ["hostname", "expected a string"]),
        ("data_dir = false\n", ["data_dir", "expected a string"]),
        ('listen = "127.0.0.1:25"\n', ["listen", "expected a list"]),
        ('listen = ["127.0.0.1:25"]\n', ["listen[0]", "expected a table"]),
        ("listen = []\n", ["listen", "at least one listener"]),
        ("[[listen]]\naddress = 25\n", ["listen[0].address", "expected a string"]),
        ('[[listen]]\ncompat = "rfc2821"\n', ["listen[0].compat", "rfc2821"]),
        ('[[listen]]\nvrfy = "yes"\n', ["listen[0].vrfy", "'yes'"]),
        ('[[listen]]\nexpn = "hidden"\n', ["listen[0].expn"]),
        ('[[listen]]\nbare_line_ends = "strip"\n', ["listen[0].bare_line_ends"]),
        ('domains = ["example.test"]\n', ["domains", "expected a table"]),
        ('[domains]\n"example.test" = "alice"\n', ["domains.example.test", "expected a table"]),
        ('[domains."example.test"]\nusers = [1]\n', ["domains.example.test.users[0]"]),
        ('[domains."example.test"]\ncatch_all = "yes"\n', ["domains.example.test.catch_all"]),
        ('trusted_networks = "192.0.2.0/24"\n', ["trusted_networks", "expected a list"]),
        ("trusted_networks = [24]\n", ["trusted_networks[0]", "expected a string"]),
        ('trusted_networks = ["192.0.2.0/33"]\n', ["192.0.2.0/33", "not a network"]),
        ("resolver = [53]\n", ["resolver[0]", "expected a string"]),
        ('limits = "big"\n', ["limits", "expected a table"]),
        ('[limits]\nmessage_size = "big"\n', ["limits.message_size", "whole number"]),
        ("[limits]\nmessage_size = 1.5\n", ["limits.message_size", "whole number"]),
        ("[limits]\nrecipients = -1\n", ["limits.recipients", ">= 0"]),
        ("[limits]\nconnections = true\n", ["limits.connections"]),
        ('[limits]\ncommand_timeout = "5m"\n', ["limits.command_timeout", "a number"]),
        ("[limits]\ndata_timeout = -0.5\n", ["limits.data_timeout"]),
        ('[[listen]]\ntls = "yes"\n', ["listen[0].tls", "'yes'"]),
        ('[[listen]]\ntls = "starttls"\n', ["listen[0].tls", "needs a certificate"]),
        ('[[listen]]\ntls = "implicit"\n', ["listen[0].tls", "tls.certificate"]),
        ('tls = "on"\n', ["tls", "expected a table"]),
        ("[tls]\nbogus = 1\n", ["unknown setting tls.bogus"]),
        ("[tls]\ncertificate = 1\n", ["tls.certificate", "expected a string"]),
        ('[tls]\nkey = "key.pem"\n', ["tls.key", "tls.certificate"]),
        ("[tls]\nmin_version = 1.2\n", ["tls.min_version", "a string"]),
        ('[tls]\nmin_version = "1.1"\n', ["tls.min_version", "'1.1'"]),
    ],
)
def test_wrong_settings_are_refused_by_name(tmp_path: Path, text: str, names: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    for name in names:
        assert name in message


def test_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="no such configuration file") as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "hostname = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_unknown_key_message_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_text(tmp_path, "[limits]\nmesage_size = 1\n")
    assert "message_size" in str(error.value)


# -- refusals that name the key they are about --------------------------------------------------


def test_bad_trusted_network_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trusted_networks\[0\]"):
        load_text(tmp_path, 'trusted_networks = ["bogus"]\n')


def test_bad_listen_port_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen\[0\]\.address"):
        load_text(tmp_path, '[[listen]]\naddress = "127.0.0.1:99999"\n')


def test_users_not_a_list_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"domains\.example\.test\.users"):
        load_text(tmp_path, '[domains."example.test"]\nusers = "alice"\n')


@pytest.mark.parametrize(
    "resolver",
    [
        '["127.0.0.1:x"]',  # not a port
        '["resolver.example.test:53"]',  # dnspython takes addresses only
        '["127.0.0.1:53", "127.0.0.2:5353"]',  # dnspython takes one port for all servers
    ],
)
def test_bad_resolver_is_refused_when_loading(tmp_path: Path, resolver: str) -> None:
    with pytest.raises(ConfigError, match="resolver"):
        load_text(tmp_path, f"resolver = {resolver}\n")


@pytest.mark.parametrize("hostname", ['""', '"mx\\r\\n250 evil"'])
def test_unusable_hostname_is_refused_when_loading(tmp_path: Path, hostname: str) -> None:
    with pytest.raises(ConfigError, match="hostname"):
        load_text(tmp_path, f"hostname = {hostname}\n")


def test_nan_timeout_is_refused(tmp_path: Path) -> None:
    assert math.isnan(tomllib.loads("x = nan")["x"])
    with pytest.raises(ConfigError, match=r"limits\.command_timeout"):
        load_text(tmp_path, "[limits]\ncommand_timeout = nan\n")


# -- TLS --------------------------------------------------------------------------------------


def test_no_certificate_means_no_tls() -> None:
    config = Config()
    assert config.tls == TLSConfig(certificate=None, key=None, min_version="1.2")
    assert config.listen[0].tls == "auto"
    assert config.listener_tls(config.listen[0]) == "none"


def test_tls_settings_load_with_paths_from_the_file(tmp_path: Path) -> None:
    text = (
        '[[listen]]\naddress = "127.0.0.1:587"\n'
        '[[listen]]\naddress = "127.0.0.1:465"\ntls = "implicit"\n'
        '[[listen]]\naddress = "127.0.0.1:2525"\ntls = "none"\n'
        '[tls]\ncertificate = "certs/cert.pem"\nkey = "/etc/pigeon/key.pem"\nmin_version = "1.3"\n'
    )
    config = load_text(tmp_path, text)
    assert config.tls == TLSConfig(
        certificate=tmp_path / "certs" / "cert.pem",
        key=Path("/etc/pigeon/key.pem"),
        min_version="1.3",
    )
    # "auto" is STARTTLS once there is a certificate.
    assert [config.listener_tls(lc) for lc in config.listen] == ["starttls", "implicit", "none"]


def test_empty_paths_are_the_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[tls]\ncertificate = ""\nkey = ""\n')
    assert config.tls == TLSConfig()


def test_key_may_live_in_the_certificate_file(tmp_path: Path) -> None:
    config = load_text(tmp_path, '[tls]\ncertificate = "both.pem"\n')
    assert config.tls.certificate == tmp_path / "both.pem"
    assert config.tls.key is None


def test_extensions_table_is_strict(tmp_path: Path) -> None:
    config = load_text(tmp_path, "[extensions]\nsmtputf8 = false\n")
    assert config.extensions == ExtensionsConfig(smtputf8=False)
    with pytest.raises(ConfigError, match=r"extensions\.chunking: expected true or false"):
        load_text(tmp_path, '[extensions]\nchunking = "yes"\n')
    with pytest.raises(ConfigError, match=r"unknown setting extensions\.turn"):
        load_text(tmp_path, "[extensions]\nturn = true\n")
    with pytest.raises(ConfigError, match=r"extensions\.binarymime: needs"):
        load_text(tmp_path, "[extensions]\nchunking = false\n")
