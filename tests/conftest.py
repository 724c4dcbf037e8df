"""Shared fixtures. The control plane starts lazily: only tests that request it (directly or through
`namespace`, `restricted_namespace` or `kubectl`) pay for it, so unit tests never start it."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

if TYPE_CHECKING:
    from pax_cluster.controlplane import ControlPlane

_START_TIMES: list[float] = []
NAMESPACE_READY_TIMEOUT_S = 30.0


class Kubectl(Protocol):
    """Signature of the `kubectl` fixture."""

    def __call__(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real etcd + kube-apiserver + kube-controller-manager for the whole session (no scheduler)."""
    from pax_cluster.binaries import BinariesNotFoundError
    from pax_cluster.controlplane import ControlPlane

    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        cp.start()
    except BinariesNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    assert cp.start_seconds is not None
    _START_TIMES.append(cp.start_seconds)
    try:
        yield cp
    finally:
        cp.stop()


def _namespace_name(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:48].rstrip("-")
    return f"{base or 'test'}-{secrets.token_hex(3)}"


def _create_namespace(cp: ControlPlane, name: str, labels: Mapping[str, str]) -> None:
    """Create it and wait for its `default` ServiceAccount (pods are rejected until it exists)."""
    cp.create_namespace(name, labels, NAMESPACE_READY_TIMEOUT_S)


def _delete_namespace(cp: ControlPlane, name: str) -> None:
    """Delete without waiting: the namespace controller finishes in the background."""
    cp.admin_session().delete(f"{cp.server}/api/v1/namespaces/{name}", timeout=30)


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its `default` ServiceAccount), deleted after the test."""
    name = _namespace_name(request)
    _create_namespace(control_plane, name, {})
    yield name
    _delete_namespace(control_plane, name)


@pytest.fixture
def restricted_namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """Like `namespace`, labelled `pod-security.kubernetes.io/enforce=restricted` (latest)."""
    name = _namespace_name(request)
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    _create_namespace(control_plane, name, labels)
    yield name
    _delete_namespace(control_plane, name)


@pytest.fixture
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """Run kubectl against the control plane (admin unless `kubeconfig=`); returns the CompletedProcess."""

    def run(
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        return control_plane.binaries.run_kubectl(
            kubeconfig or control_plane.kubeconfig, *args, input=input, timeout=timeout, check=check
        )

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long the control plane took to start (warm: binaries already built)."""
    for seconds in _START_TIMES:
        terminalreporter.write_line(f"control plane started in {seconds:.1f}s")
