"""TLS from the command line: ``pigeon tls selfsigned``, the ``pigeon serve`` TLS flags and
their errors (exit 78 naming the setting), and SIGHUP reloading the certificate of a real
``pigeon serve`` process, with one worker and with several."""

from __future__ import annotations

import ipaddress
import re
import smtplib
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.peers import TestCA
from tests.servers import PigeonProcess, tls_config, wait_for

EX_CONFIG = 78
EX_CANTCREAT = 73
ALICE = "alice@example.test"


def run_pigeon(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pigeon", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


# -- pigeon tls selfsigned --------------------------------------------------------------------


def selfsigned(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pigeon(["tls", "selfsigned", *args], cwd=tmp_path)


def test_selfsigned_writes_a_certificate_that_loads_and_names_the_hosts(tmp_path: Path) -> None:
    result = selfsigned(
        tmp_path, "--hostname", "mx.example.test", "--hostname", "192.0.2.25", "--days", "30"
    )
    assert result.returncode == 0, result.stderr
    cert, key = tmp_path / "pigeon-cert.pem", tmp_path / "pigeon-key.pem"
    assert "pigeon serve --tls-cert pigeon-cert.pem --tls-key pigeon-key.pem" in result.stdout
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)  # the pair matches
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.25")]
    assert parsed.subject == parsed.issuer
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 30 <= lifetime.days <= 31


def test_selfsigned_defaults_are_for_this_machine(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = selfsigned(tmp_path, "--out-cert", str(out / "c.pem"), "--out-key", str(out / "k.pem"))
    assert result.returncode == 0, result.stderr
    parsed = x509.load_pem_x509_certificate((out / "c.pem").read_bytes())
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_selfsigned_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    key = tmp_path / "pigeon-key.pem"
    key.write_text("precious\n")
    result = selfsigned(tmp_path)
    assert result.returncode == EX_CANTCREAT
    assert "--out-key" in result.stderr
    assert "--force" in result.stderr
    assert key.read_text() == "precious\n"
    assert not (tmp_path / "pigeon-cert.pem").exists()  # nothing half-written
    key.chmod(0o644)
    result = selfsigned(tmp_path, "--force")
    assert result.returncode == 0, result.stderr
    assert "PRIVATE KEY" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--hostname", "not a host"], "--hostname"),
        (["--days", "0"], "--days"),
        (["--out-cert", "same.pem", "--out-key", "same.pem"], "different"),
    ],
)
def test_selfsigned_bad_arguments(tmp_path: Path, args: list[str], expected: str) -> None:
    result = selfsigned(tmp_path, *args)
    assert result.returncode == 64
    assert expected in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_pigeon_serves_the_selfsigned_certificate(tmp_path: Path) -> None:
    assert selfsigned(tmp_path).returncode == 0
    server = PigeonProcess(
        [
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "pigeon-cert.pem",
            "--tls-key",
            "pigeon-key.pem",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
    )
    try:
        assert "(STARTTLS)" in "\n".join(server.banner)
        context = ssl.create_default_context(cafile=tmp_path / "pigeon-cert.pem")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
            assert client.starttls(context=context)[0] == 220  # verified, for 127.0.0.1
        assert server.terminate() == 0
    finally:
        server.close()


# -- pigeon serve: configuration errors -------------------------------------------------------


def tls_errors(tmp_path: Path, ca: TestCA) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (arguments, what stderr must say)."""
    files = tmp_path / "files"
    good = tls_config(ca.cert, files / "good")
    other = tls_config(ca.ca.issue_cert("localhost"), files / "other")
    assert good.certificate
    assert good.key
    assert other.key
    garbage = files / "garbage.pem"
    garbage.write_text("hello\n")
    encrypted = files / "encrypted.pem"
    _write_encrypted_key(ca.cert, encrypted)
    conf = files / "conf"
    conf.mkdir()
    (conf / "implicit.toml").write_text('[[listen]]\naddress = "127.0.0.1:0"\ntls = "implicit"\n')
    (conf / "version.toml").write_text("[tls]\nmin_version = 1.3\n")
    (conf / "missing.toml").write_text('[tls]\ncertificate = "nowhere.pem"\n')
    cert, key = str(good.certificate), str(good.key)
    return {
        "missing cert": (
            ["--tls-cert", str(files / "missing.pem")],
            ["tls.certificate (--tls-cert)", "missing.pem", "No such file"],
        ),
        "cert is a directory": (["--tls-cert", str(files)], ["tls.certificate", "cannot read"]),
        "cert is garbage": (["--tls-cert", str(garbage)], ["garbage.pem", "no PEM certificate"]),
        "no key in the cert file": (["--tls-cert", cert], ["holds no private key", "tls.key"]),
        "missing key": (
            ["--tls-cert", cert, "--tls-key", str(files / "nokey.pem")],
            ["tls.key (--tls-key)", "nokey.pem"],
        ),
        "key is garbage": (["--tls-cert", cert, "--tls-key", str(garbage)], ["no PEM private key"]),
        "key of another certificate": (
            ["--tls-cert", cert, "--tls-key", str(other.key)],
            ["tls.key", "does not match"],
        ),
        "encrypted key": (["--tls-cert", cert, "--tls-key", str(encrypted)], ["encrypted"]),
        "listen-tls without a certificate": (["--listen-tls", "127.0.0.1:0"], ["--listen-tls"]),
        "tls-key without a certificate": (["--tls-key", key], ["--tls-key", "--tls-cert"]),
        "file: implicit without a certificate": (
            ["-c", str(conf / "implicit.toml")],
            ["listen[0].tls", "tls.certificate"],
        ),
        "file: min_version as a number": (["-c", str(conf / "version.toml")], ["tls.min_version"]),
        "file: missing certificate": (
            ["-c", str(conf / "missing.toml")],
            ["tls.certificate", str(conf / "nowhere.pem")],  # relative to the file
        ),
    }


def _write_encrypted_key(cert: trustme.LeafCert, path: Path) -> None:
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


TLS_ERRORS = [
    "missing cert",
    "cert is a directory",
    "cert is garbage",
    "no key in the cert file",
    "missing key",
    "key is garbage",
    "key of another certificate",
    "encrypted key",
    "listen-tls without a certificate",
    "tls-key without a certificate",
    "file: implicit without a certificate",
    "file: min_version as a number",
    "file: missing certificate",
]


@pytest.mark.parametrize("case", TLS_ERRORS)
def test_tls_configuration_errors_exit_78(tmp_path: Path, ca: TestCA, case: str) -> None:
    args, expected = tls_errors(tmp_path, ca)[case]
    data = tmp_path / "data"
    result = run_pigeon(
        ["serve", "--workers", "1", "--listen", "127.0.0.1:0", "--data-dir", str(data), *args],
        cwd=tmp_path,
    )
    assert result.returncode == EX_CONFIG, result.stderr
    assert result.stderr.startswith("pigeon serve: ")
    for text in expected:
        assert text in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout
    assert not data.exists()


# -- pigeon serve: listeners and SIGHUP -------------------------------------------------------


class Served:
    """A ``pigeon serve`` process with a STARTTLS and an implicit-TLS listener; its stderr is
    read as it comes, so that a test can wait for a log line."""

    def __init__(self, tmp_path: Path, tls_dir: Path, workers: int) -> None:
        self.process = PigeonProcess(
            [
                "--workers",
                str(workers),
                "--listen",
                "127.0.0.1:0",
                "--listen-tls",
                "127.0.0.1:0",
                "--tls-cert",
                str(tls_dir / "cert.pem"),
                "--tls-key",
                str(tls_dir / "key.pem"),
                "--hostname",
                "mx.example.test",
                "--domain",
                "example.test",
                "--user",
                "alice",
                "--data-dir",
                str(tmp_path / "data"),
            ],
            cwd=tmp_path,
        )
        banner = "\n".join(self.process.banner)
        self.starttls = int(re.search(r"listening on [\d.]+:(\d+) \(STARTTLS\)", banner)[1])  # type: ignore[index]
        self.implicit = int(re.search(r"listening on [\d.]+:(\d+) \(implicit TLS\)", banner)[1])  # type: ignore[index]
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.process.stderr
        assert stream is not None
        for line in stream:
            self.log.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.log))

    def certificates(self) -> set[bytes]:
        """The certificates served on both listeners, over a few connections each."""
        seen = set()
        for _ in range(4):
            seen.add(served_certificate(self.starttls, implicit=False))
            seen.add(served_certificate(self.implicit, implicit=True))
        return seen

    def stop(self) -> int:
        status = self.process.terminate()
        self._reader.join(10)
        return status

    def close(self) -> None:
        self.process.kill()
        self._reader.join(10)  # at the end of the pipe now: then close it
        self.process.close()


def served_certificate(port: int, *, implicit: bool) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if implicit:
        sock = context.wrap_socket(raw, server_hostname="localhost")
    else:
        reader = raw.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.test\r\n")
        while reader.readline()[3:4] == b"-":
            pass
        raw.sendall(b"STARTTLS\r\n")
        assert reader.readline() == b"220 2.0.0 Ready to start TLS\r\n"
        sock = context.wrap_socket(raw, server_hostname="localhost")
    with sock:
        der = sock.getpeercert(binary_form=True)
        sock.sendall(b"QUIT\r\n")
    assert der is not None
    return der


def der_of(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode("ascii"))


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def served(request: pytest.FixtureRequest, tmp_path: Path, ca: TestCA) -> Iterator[Served]:
    tls_config(ca.cert, tmp_path / "tls")
    server = Served(tmp_path, tmp_path / "tls", workers=request.param)
    try:
        yield server
    finally:
        server.close()


def test_sighup_reloads_the_certificate(served: Served, ca: TestCA, tmp_path: Path) -> None:
    workers = 2 if "2 worker processes" in served.process.banner[-1] else 1
    assert served.certificates() == {der_of(ca.cert)}
    renewed = ca.ca.issue_cert("localhost", "127.0.0.1")
    tls_config(renewed, tmp_path / "tls")
    served.process.process.send_signal(1)  # SIGHUP
    wait_for(lambda: served.count("event=tls_reloaded") >= workers, what=f"{workers} reload(s)")
    assert served.certificates() == {der_of(renewed)}

    # A reload that fails is logged, and the certificate in use stays.
    (tmp_path / "tls" / "cert.pem").write_text("broken\n")
    served.process.process.send_signal(1)
    wait_for(lambda: served.count("event=tls_reload_failed") >= workers, what="the failed reloads")
    assert served.certificates() == {der_of(renewed)}
    assert served.process.process.poll() is None

    context = ssl.create_default_context()
    ca.ca.configure_trust(context)
    with smtplib.SMTP_SSL("127.0.0.1", served.implicit, timeout=10, context=context) as client:
        assert client.sendmail("carol@remote.test", [ALICE], "Subject: x\r\n\r\nx\r\n") == {}
    assert served.stop() == 0
    log = "".join(served.log)
    assert "Traceback" not in log
    assert "no PEM certificate" in log
