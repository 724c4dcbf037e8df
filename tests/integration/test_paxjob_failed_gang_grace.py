"""The grace period a replaced gang gets, as the real apiserver records it (the pods'
metadata.deletionGracePeriodSeconds): a failed attempt's pods at most 30 s, a preempted gang's its own
spec.terminationGracePeriodSeconds.

No kubelet runs in this tier and the apiserver deletes an unscheduled pod at once whatever the grace period,
so the pods are bound to a node name first, as the scheduler would: then a deletion leaves them terminating
with the grace period it asked for, and the test finishes it (grace 0) as the kubelet would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from paxjob_harness import Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration

NODE = "grace-node"  # a Node object (no kubelet): the control plane's pod GC deletes pods bound to none
GRACE = 600


def _bind_and_run(pax: Pax, job: str, attempt: int) -> None:
    for pod in pax.wait_pods(job, 2, attempt):
        name = pod["metadata"]["name"]
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=NODE),
        )
        pax.core.create_namespaced_pod_binding(name, pax.namespace, binding, _preload_content=False)
    pax.run_all(job)
    pax.wait_status(job, f"Running at attempt {attempt}", lambda s: s.get("phase") == "Running")


def _terminating(pax: Pax, job: str, names: set[str]) -> dict[str, int]:
    """Wait until the pods `names` are being deleted; their deletionGracePeriodSeconds."""

    def seen() -> dict[str, int] | None:
        found = {
            p["metadata"]["name"]: p["metadata"]["deletionGracePeriodSeconds"]
            for p in pax.pods(job)
            if p["metadata"].get("deletionTimestamp")
        }
        return found if set(found) == names else None

    return wait_for(f"{sorted(names)} terminating", seen, timeout=40)


def _finish_deletion(pax: Pax, job: str) -> None:
    """What the kubelet does once the containers stopped."""
    for pod in pax.pods(job):
        pax.core.delete_namespaced_pod(pod["metadata"]["name"], pax.namespace, grace_period_seconds=0)


@pytest.fixture
def gang(operator, pax: Pax) -> Iterator[str]:
    pax.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE)))
    try:
        pax.create("saver", cpu_job(2, terminationGracePeriodSeconds=GRACE))
        _bind_and_run(pax, "saver", 0)
        yield "saver"
        _finish_deletion(pax, "saver")  # a bound pod left terminating would hold up the namespace's deletion
    finally:
        pax.core.delete_node(NODE)


def test_a_failed_host_s_peers_get_the_short_grace_a_preempted_gang_its_own(gang: str, pax: Pax) -> None:
    pax.kubelet(f"{gang}-1", "Failed", exit_code=1)  # crashed: its peer cannot save without it
    # The Failed pod goes at once (a finished pod has nothing to stop); its scheduled peer waits 30 s.
    assert _terminating(pax, gang, {f"{gang}-0"}) == {f"{gang}-0": 30}
    status: dict[str, Any] = pax.status(gang)
    assert (status["phase"], status["failures"], status["lastRestart"]["reason"]) == (
        "Restarting",
        1,
        "Crashed",
    )
    _finish_deletion(pax, gang)
    _bind_and_run(pax, gang, 1)

    disruption = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    pax.kubelet(f"{gang}-1", "Running", conditions=disruption)  # SIGTERM'd: the gang saves together
    assert _terminating(pax, gang, {f"{gang}-0", f"{gang}-1"}) == {f"{gang}-0": GRACE, f"{gang}-1": GRACE}
    assert pax.status(gang)["preemptions"] == 1
    assert [p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in pax.pods(gang)] == ["1", "1"]
