"""PaxJob integration fixtures: CRD + RBAC from deploy/, the operator as a subprocess authenticated as
system:serviceaccount:pax-system:pax-operator, an admin API client for the tests' own view."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client, config
from pax_cluster.procs import DEPLOY, PAX_CRDS
from paxjob_harness import OPERATOR_NAMESPACE, OPERATOR_SA, OperatorProcess, Pax

if TYPE_CHECKING:
    from pax_cluster.controlplane import ControlPlane


@pytest.fixture(scope="session")
def pax_installed(control_plane: ControlPlane) -> Path:
    """Apply deploy/'s CRD and RBAC (not the Deployment: the operator runs here as a subprocess)."""
    control_plane.apply(DEPLOY / "crds", DEPLOY / "rbac", established=PAX_CRDS)
    return control_plane.kubeconfig_for_service_account(OPERATOR_NAMESPACE, OPERATOR_SA)


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    """Admin API client (the tests' view; the operator never uses it)."""
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def operator(pax_installed: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A running operator for this test's namespace (killed at teardown)."""
    process = OperatorProcess(pax_installed, namespace, tmp_path / "operator.log").start()
    try:
        yield process
    finally:
        process.dump_stacks()
        process.kill()
        print(f"--- operator log tail ---\n{process.log_tail(30)}")


@pytest.fixture
def operator_factory(pax_installed: Path, tmp_path: Path) -> Iterator[Callable[[str], OperatorProcess]]:
    """Start operators on demand (e.g. to kill and restart one); all are killed at teardown."""
    started: list[OperatorProcess] = []

    def start(namespace: str) -> OperatorProcess:
        process = OperatorProcess(pax_installed, namespace, tmp_path / "operator.log").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.dump_stacks()
        process.kill()


@pytest.fixture
def pax(core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str) -> Pax:
    return Pax(core, custom, namespace)
