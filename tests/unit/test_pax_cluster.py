"""Unit tests of the control-plane tooling that need no binaries (never start the control plane)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from pax_cluster import pki, procs
from pax_cluster.binaries import BinariesNotFoundError, find_binaries, read_versions
from pax_cluster.kubeconfig import write_kubeconfig


def test_client_cert_carries_user_and_groups() -> None:
    ca = pki.new_ca()
    cred = pki.issue_client_cert(ca, "alice", ["devs", "ops"])
    cert = x509.load_pem_x509_certificate(cred.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "devs",
        "ops",
    ]


def test_serving_cert_sans() -> None:
    ca = pki.new_ca()
    cert = x509.load_pem_x509_certificate(
        pki.issue_serving_cert(ca, "s", ["localhost", "127.0.0.1"]).cert_pem
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_key_files_are_private(tmp_path: Path) -> None:
    crt, key = pki.new_ca().write(tmp_path, "ca")
    assert key.stat().st_mode & 0o077 == 0
    assert pki.CertKey.read(tmp_path, "ca").cert_pem == crt.read_bytes()


def test_kubeconfig_token_and_cert(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kc", server="https://127.0.0.1:1", ca_pem=b"ca", user="u", token="t")
    config = yaml.safe_load(path.read_text())
    assert config["users"][0]["user"] == {"token": "t"}
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"
    with pytest.raises(ValueError):
        write_kubeconfig(tmp_path / "kc2", server="s", ca_pem=b"", user="u")


def test_missing_binaries_say_how_to_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAX_K8S_BIN_DIR", str(tmp_path))
    with pytest.raises(BinariesNotFoundError, match="make k8s-bins"):
        find_binaries()


def test_versions_file() -> None:
    versions = read_versions()
    assert versions["K8S_VERSION"].startswith("v1.")
    assert versions["ETCD_VERSION"].startswith("v3.")


def test_spawn_and_terminate_leave_nothing(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    p = procs.spawn(["/bin/sh", "-c", "echo started; trap '' TERM; sleep 60"], log, detach=False)
    deadline = time.monotonic() + 10
    while "started" not in procs.log_tail(log) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.alive(p.pid, "/bin/sh")
    procs.terminate([p.pid], grace_s=0.5)  # ignores SIGTERM: needs the SIGKILL
    assert p.wait(timeout=5) == -9
    assert not procs.alive(p.pid)
