"""Leader election: two operator replicas, one active; SIGKILL the active one and the standby takes the
Lease over and gives a pending PaxJob its pods; a clean stop hands the Lease back at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from paxjob_harness import OPERATOR_NAMESPACE, ObservedOperator, Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration

LEASE = "pax-operator"  # the name deploy/rbac's Role allows
LEASE_DURATION_S = 4.0
RETRY_PERIOD_S = 0.5
SLACK_S = 30.0  # a loaded 2-core box: reconcile and pod creation after the takeover
START_S = 90.0  # an operator's start-up (imports, first listings) on a loaded box


class Replica(ObservedOperator):
    """One operator replica with leader election."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        super().__init__(
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
            ],
        )

    def role(self) -> str:
        code, body = self.readiness()
        return body if code == 200 else f"unready ({code}: {body})"


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
        first.start(timeout_s=START_S)
        wait_for("the first replica to lead", lambda: first.role() == "leading", timeout=START_S)
        second.start(timeout_s=START_S)
        wait_for("the second replica to stand by", lambda: second.role() == "standby", timeout=START_S)

        pax.create("before", cpu_job(hosts=2))
        pax.wait_pods("before", 2, attempt=0, timeout=START_S)
        # A reconcile is timed when it ends, after the status write that follows its pod creations.
        wait_for(
            "the leader's reconcile to end",
            lambda: first.metric("pax_operator_reconcile_seconds_count") > 0,
            timeout=SLACK_S,
        )
        assert second.metric("pax_operator_reconcile_seconds_count") == 0, "the standby reconciled"
        assert (first.metric("pax_operator_leader"), second.metric("pax_operator_leader")) == (1, 0)
        transitions = coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec.lease_transitions

        first.kill()  # SIGKILL: the Lease is not released, the standby must wait it out
        killed = time.monotonic()
        pax.create("after", cpu_job(hosts=2))
        pax.wait_pods("after", 2, attempt=0, timeout=LEASE_DURATION_S + SLACK_S)
        takeover = time.monotonic() - killed
        print(
            f"pods of a pending PaxJob {takeover:.1f}s after SIGKILL of the leader "
            f"(lease duration {LEASE_DURATION_S}s)"
        )
        assert second.role() == "leading"
        lease = coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE).spec
        assert lease.lease_transitions == (transitions or 0) + 1
        assert second.metric("pax_operator_leader") == 1
        wait_for(  # counted once the operator has read each answer, which may be after the test sees the pod
            "the new leader's pod creations counted",
            lambda: second.metric("pax_operator_apiserver_requests_total", verb="create", code="201") >= 2,
            timeout=SLACK_S,
        )

        # A clean stop hands the Lease back: a new standby takes it without waiting a lease duration.
        third = Replica(pax_installed, namespace, tmp_path / "third.log")
        replicas.append(third)
        third.start(timeout_s=START_S)
        wait_for("the third replica to stand by", lambda: third.role() == "standby", timeout=START_S)
        second.stop()
        stopped = time.monotonic()
        wait_for("the third replica to lead", lambda: third.role() == "leading", timeout=SLACK_S)
        print(f"released lease taken over {time.monotonic() - stopped:.1f}s after SIGTERM")
        assert "released the lease" in second.log_tail(40)
    finally:
        for replica in replicas:
            replica.dump_stacks()
            replica.kill()
            print(f"--- {replica.log_path.name} ---\n{replica.log_tail(15)}")
