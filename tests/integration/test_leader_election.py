"""Leader election: two operator replicas, one active; SIGKILL the active one and the standby takes the
Lease over and gives a pending PaxJob its pods; a clean stop hands the Lease back at once."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pax_cluster.procs import free_port
from paxjob_harness import OPERATOR_NAMESPACE, OperatorProcess, Pax, cpu_job, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

LEASE = "pax-operator"  # the name deploy/rbac's Role allows
LEASE_DURATION_S = 4.0
RETRY_PERIOD_S = 0.5
SLACK_S = 30.0  # a loaded 2-core box: reconcile and pod creation after the takeover
START_S = 90.0  # an operator's start-up (imports, first listings) on a loaded box


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


class Replica:
    """One operator replica with leader election and its metrics endpoint."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.metrics_port = free_port()
        self.process = OperatorProcess(
            kubeconfig,
            namespace,
            log,
            extra_args=[
                "--leader-elect",
                f"--leader-election-namespace={OPERATOR_NAMESPACE}",
                f"--leader-election-id={LEASE}",
                f"--lease-duration={LEASE_DURATION_S}",
                f"--renew-deadline={LEASE_DURATION_S - 1}",
                f"--retry-period={RETRY_PERIOD_S}",
                f"--metrics-address=127.0.0.1:{self.metrics_port}",
            ],
        )

    def readiness(self) -> str:
        code, body = _get(f"http://127.0.0.1:{self.metrics_port}/readyz")
        return body.strip() if code == 200 else f"unready ({code}: {body.strip()})"

    def metric(self, name: str, **labels: str) -> float:
        _, text = _get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


@pytest.fixture
def coordination(api: client.ApiClient) -> Iterator[client.CoordinationV1Api]:
    leases = client.CoordinationV1Api(api)

    def clear() -> None:
        try:
            leases.delete_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
        except ApiException as err:
            if err.status != 404:
                raise

    clear()
    yield leases
    clear()


def test_standby_takes_over_when_the_leader_is_killed(
    pax_installed: Path,
    namespace: str,
    pax: Pax,
    coordination: client.CoordinationV1Api,
    tmp_path: Path,
) -> None:
    first = Replica(pax_installed, namespace, tmp_path / "first.log")
    second = Replica(pax_installed, namespace, tmp_path / "second.log")
    replicas = [first, second]
    try:
        first.process.start(timeout_s=START_S)
        wait_for("the first replica to lead", lambda: first.readiness() == "leading", timeout=START_S)
        second.process.start(timeout_s=START_S)
        wait_for("the second replica to stand by", lambda: second.readiness() == "standby", timeout=START_S)

        pax.create("before", cpu_job(hosts=2))
        pax.wait_pods("before", 2, attempt=0, timeout=START_S)
        assert second.metric("pax_operator_reconcile_seconds_count") == 0, "the standby reconciled"
        assert first.metric("pax_operator_reconcile_seconds_count") > 0
        assert (first.metric("pax_operator_leader"), second.metric("pax_operator_leader")) == (1, 0)
        transitions = coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec.lease_transitions

        first.process.kill()  # SIGKILL: the Lease is not released, the standby must wait it out
        killed = time.monotonic()
        pax.create("after", cpu_job(hosts=2))
        pax.wait_pods("after", 2, attempt=0, timeout=LEASE_DURATION_S + SLACK_S)
        takeover = time.monotonic() - killed
        print(
            f"pods of a pending PaxJob {takeover:.1f}s after SIGKILL of the leader "
            f"(lease duration {LEASE_DURATION_S}s)"
        )
        assert second.readiness() == "leading"
        lease = coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec
        assert lease.lease_transitions == (transitions or 0) + 1
        assert second.metric("pax_operator_leader") == 1
        assert second.metric("pax_operator_apiserver_requests_total", verb="create", code="201") >= 2

        # A clean stop hands the Lease back: a new standby takes it without waiting a lease duration.
        third = Replica(pax_installed, namespace, tmp_path / "third.log")
        replicas.append(third)
        third.process.start(timeout_s=START_S)
        wait_for("the third replica to stand by", lambda: third.readiness() == "standby", timeout=START_S)
        second.process.stop()
        stopped = time.monotonic()
        wait_for("the third replica to lead", lambda: third.readiness() == "leading", timeout=SLACK_S)
        print(f"released lease taken over {time.monotonic() - stopped:.1f}s after SIGTERM")
        assert "released the lease" in second.process.log_tail(40)
    finally:
        for replica in replicas:
            replica.process.dump_stacks()
            replica.process.kill()
            print(f"--- {replica.process.log_path.name} ---\n{replica.process.log_tail(15)}")
