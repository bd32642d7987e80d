"""`check` with a client certificate: CN against [gateway] serial and the chain, before connecting;
then login and the device token, against the sandbox with certificate login (issue 15)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashkanban.c8y.certs import inspect_certificate
from dashkanban.sandbox import Sandbox
from tests.brokers import TlsFiles, make_tls_files
from tests.sandbox_fixture import sandbox_options

GW = "dashkanban-gw-test"  # the CN of tls_files' client certificate
NOW = dt.datetime.now(dt.UTC)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dashkanban", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_device_certificate_with_its_chain(tls_files: TlsFiles, tmp_path: Path) -> None:
    leaf = tls_files.client_cert.read_bytes()
    ca = tls_files.ca_cert.read_bytes()
    alone = inspect_certificate(leaf, GW, NOW)
    assert (alone.common_name, alone.chain, alone.problems, alone.ends_at_root) == (
        GW, (GW,), (), False)
    full = inspect_certificate(leaf + ca, GW, NOW)
    assert (full.chain, full.problems, full.ends_at_root) == (
        (GW, "dashkanban test CA"), (), True)
    assert inspect_certificate(leaf, "dashkanban-gw-01", NOW).problems == (
        "the certificate's CN 'dashkanban-gw-test' differs from [gateway] serial "
        "'dashkanban-gw-01': Cumulocity refuses the login with CONNACK 5 (the client id must "
        "equal the CN)",)
    later = NOW + dt.timedelta(days=3)
    assert [p.split(" expired on ")[0] for p in inspect_certificate(leaf, GW, later).problems] == [
        f"'{GW}'"]
    other_ca = make_tls_files(tmp_path / "other").ca_cert.read_bytes()
    assert inspect_certificate(leaf + other_ca, GW, NOW).problems == (
        f"'{GW}' is not signed by the next certificate in the file, 'dashkanban test CA': the "
        "chain is broken",)
    # A leaf after the leaf: no CA.
    assert inspect_certificate(leaf + leaf, GW, NOW).problems[0] == (
        f"'{GW}' signs '{GW}' but is no CA (BasicConstraints CA:true)")
    with pytest.raises(ValueError, match="Unable to load PEM"):
        inspect_certificate(b"not a certificate", GW, NOW)


@pytest.fixture
def cert_sandbox(tls_files: TlsFiles) -> Iterator[Sandbox]:
    options = sandbox_options(mqtts_port=0, tls_cert=tls_files.server_cert,
                              tls_key=tls_files.server_key, trusted_ca=tls_files.ca_cert)
    with Sandbox(options) as running:
        yield running


def cert_config(folder: Path, sandbox: Sandbox, tls: TlsFiles, serial: str = GW,
                cert: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MACID.csv").write_text("Name, MAC-Address\n")
    config = folder / "config.ini"
    config.write_text(
        f"[C8YMQTT]\ntenant = localhost\ntenantID = t12345\nuser = device_{serial}\n"
        f"port = {sandbox.mqtts_port}\nca_file = {tls.ca_cert}\n"
        f"cert_file = {cert or tls.client_cert}\nkey_file = {tls.client_key}\n"
        f"rest_url = {sandbox.http_url}\n\n"
        f"[gateway]\nserial = {serial}\nname = Store 3\n\n"
        f"[buttons]\nfile = {folder / 'MACID.csv'}\n\n"
        f"[outbox]\npath = {folder / 'outbox.sqlite3'}\n", encoding="utf-8")
    config.chmod(0o600)
    return config


def test_check_certificate_login_and_token(cert_sandbox: Sandbox, tls_files: TlsFiles,
                                           tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(tls_files.client_cert.read_bytes() + tls_files.ca_cert.read_bytes())
    config = cert_config(tmp_path, cert_sandbox, tls_files, cert=chain)
    result = run("check", "-c", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # after config, buttons, capture and outbox; before DNS, TCP, TLS and the login
    assert lines[4] == (f"✓ certificate CN={GW} = [gateway] serial; chain {GW} <- dashkanban "
                        "test CA (the tenant must trust its root)")
    assert lines[-3:] == [
        f"✓ MQTT login as client certificate, client id {GW}",
        "✓ device token for REST (s/uat): valid 3600 s, sent as Bearer",
        "✓ all checks passed: events go to localhost in gateway mode",
    ]
    assert cert_sandbox.stats()["tokens"] == 1


def test_check_refuses_a_cn_that_is_not_the_serial_before_connecting(
        cert_sandbox: Sandbox, tls_files: TlsFiles, tmp_path: Path) -> None:
    config = cert_config(tmp_path, cert_sandbox, tls_files, serial="dashkanban-gw-01")
    result = run("check", "-c", str(config))
    assert result.returncode == 1
    problem = ("the certificate's CN 'dashkanban-gw-test' differs from [gateway] serial "
               "'dashkanban-gw-01': Cumulocity refuses the login with CONNACK 5 (the client id "
               "must equal the CN)")
    assert result.stdout.splitlines()[-2:] == [
        f"✗ certificate: {problem}",
        "  hint: the CN must equal [gateway] serial, and the file must hold the chain up to the "
        "CA the tenant trusts (Cumulocity: Device management > Trusted certificates)",
    ]
    assert result.stderr.splitlines()[-1] == (
        "error: check: 1 step failed (uplink); see the lines marked ✗ above")
    assert cert_sandbox.stats().get("connections", 0) == 0  # stopped before connecting

