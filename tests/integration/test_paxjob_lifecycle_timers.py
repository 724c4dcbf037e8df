"""Lifecycle timers and crash windows against a real apiserver: activeDeadlineSeconds bounds a job whose pods
are refused for ever, and a resume interrupted between its pod creations and its status write keeps the gang
it made. The operator runs as a subprocess under deploy/'s RBAC; no kubelet runs in this tier."""

from __future__ import annotations

import pytest
from kubernetes import client
from paxjob_harness import Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_active_deadline_bounds_a_job_whose_pods_are_refused_for_ever(operator, pax: Pax, core, namespace):
    """A ResourceQuota of 0 pods refuses every gang pod (403 exceeded quota): the gang is never created.
    The deadline's clock started only at gang creation, so such a job stayed Pending for ever; as for a
    batch/v1 Job it now starts when the job first tries to start."""
    hard = {"pods": "0"}
    quota = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="nopods"), spec={"hard": hard})
    core.create_namespaced_resource_quota(namespace, quota)
    core.patch_namespaced_resource_quota_status(
        "nopods", namespace, {"status": {"hard": hard, "used": {"pods": "0"}}}
    )
    pax.create("starved", cpu_job(2, activeDeadlineSeconds=3))
    status = pax.wait_status(
        "starved", "Created=False", lambda s: _condition(s, "Created").get("reason") == "FailedCreatePod"
    )
    assert "exceeded quota" in _condition(status, "Created")["message"]
    status = pax.wait_status("starved", "Failed", lambda s: s.get("phase") == "Failed", timeout=30)
    assert _condition(status, "Failed")["reason"] == "DeadlineExceeded"
    assert status.get("startTime") and pax.pods("starved") == []
    wait_for("a DeadlineExceeded event", lambda: "DeadlineExceeded" in pax.events("starved"), timeout=10)
