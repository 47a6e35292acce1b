"""TLS for the server: the SSLContext built from ``[tls]``, and its replacement on SIGHUP.

A session takes the context that is current when its handshake starts (at STARTTLS, or on
connection for implicit TLS) and keeps it; a reload builds a new context for the sessions
that come after, so a certificate renewed on disk is served without a restart and without
cutting anyone off. A reload that fails leaves the old context in place.

Every failure is a ``ConfigError`` naming the setting (and its flag), so ``pigeon serve``
exits 78 with it at start and a reload logs it.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pigeon.config import ConfigError, Limits, TLSConfig

__all__ = [
    "SHUTDOWN_TIMEOUT",
    "ServerTLS",
    "build_context",
    "describe",
    "handshake_timeout",
    "self_signed",
]

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# How long closing waits for the client's close_notify before dropping the connection.
SHUTDOWN_TIMEOUT = 5.0
_HANDSHAKE_TIMEOUT = 60.0
_CERTIFICATE = "tls.certificate (--tls-cert)"
_KEY = "tls.key (--tls-key)"


def handshake_timeout(limits: Limits) -> float:
    """The longest a TLS handshake may take: a minute, or the command timeout if shorter."""
    timeout = limits.command_timeout
    return min(timeout, _HANDSHAKE_TIMEOUT) if timeout else _HANDSHAKE_TIMEOUT


def build_context(config: TLSConfig) -> ssl.SSLContext:
    """A server-side context with the configured certificate chain and key."""
    certificate = config.certificate
    if certificate is None:
        raise ConfigError(f"{_CERTIFICATE}: no certificate is configured")
    key = config.key
    chain = _read(certificate, _CERTIFICATE)
    if b"-----BEGIN CERTIFICATE-----" not in chain:
        raise ConfigError(f"{_CERTIFICATE}: {certificate} holds no PEM certificate")
    if key is None:
        if b"PRIVATE KEY-----" not in chain:
            raise ConfigError(
                f"{_CERTIFICATE}: {certificate} holds no private key; set tls.key (--tls-key)"
            )
    elif b"PRIVATE KEY-----" not in _read(key, _KEY):
        raise ConfigError(f"{_KEY}: {key} holds no PEM private key")

    def no_password() -> bytes:
        # Without this OpenSSL would ask on the terminal, and a SIGHUP would hang the server.
        where = _KEY if key is not None else _CERTIFICATE
        raise ConfigError(f"{where}: the private key is encrypted; give an unencrypted one")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _VERSIONS[config.min_version]
    # Client-initiated renegotiation (TLS 1.2) costs the server far more than the client.
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certificate, key, password=no_password)
    except ssl.SSLError as error:
        if "KEY_VALUES_MISMATCH" in str(error):
            raise ConfigError(
                f"{_KEY}: {key or certificate} does not match the certificate in {certificate}"
            ) from None
        raise ConfigError(
            f"{_CERTIFICATE}, {_KEY}: cannot load {certificate}"
            f"{f' with {key}' if key else ''}: {error.reason or error}"
        ) from None
    except OSError as error:  # the file went away between the read and the load
        raise ConfigError(f"{_CERTIFICATE}: cannot read {certificate}: {error}") from None
    return context


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read {path}: {error.strerror or error}") from None


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The TLS of a session as Postfix writes it in Received headers:
    ``TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)``."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    if cipher is None:
        return None
    name, _, bits = cipher
    return f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"


class ServerTLS:
    """The current context of one server; ``reload()`` swaps in a new one or raises."""

    def __init__(self, config: TLSConfig) -> None:
        self.config = config
        self.context = build_context(config)

    def reload(self) -> None:
        self.context = build_context(self.config)


def self_signed(hostnames: Sequence[str], *, days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed certificate for development, and its key: (certificate PEM, key PEM).

    Every name goes into the subjectAltName (an IP address as an address, anything else as
    a DNS name); the first is also the subject's common name. RSA 2048 with SHA-256, which
    every TLS client speaks."""
    if not hostnames:
        raise ValueError("at least one hostname is needed")
    if days < 1:
        raise ValueError("the certificate must be valid for at least one day")
    names: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate_pem, key_pem
