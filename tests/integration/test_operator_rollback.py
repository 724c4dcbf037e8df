"""After `helm rollback` the operator meets PaxJob statuses a newer operator wrote (Helm leaves the newer CRD
in place: it never touches crds/). Against the real apiserver: a condition type the operator does not know
stays, the job is still reconciled (a failure restarts the gang), and a status field the installed CRD does
not declare is pruned by the apiserver whoever writes it."""

from __future__ import annotations

import pytest
from paxjob_harness import GROUP, PLURAL, VERSION, Pax, cpu_job

pytestmark = pytest.mark.integration

NEWER_CONDITION = {
    "type": "CheckpointStale",
    "status": "True",
    "reason": "NoCommitSinceStart",
    "message": "written by a newer operator",
    "lastTransitionTime": "2026-11-25T11:00:00Z",
}


def test_a_newer_operators_status_is_kept_and_the_job_still_reconciled(operator, pax: Pax, custom) -> None:
    pax.create("lm", cpu_job(2, restartPolicy={"maxFailures": 3, "backoffSeconds": 1}))
    pax.wait_pods("lm", 2, 0)
    pax.run_all("lm")
    pax.wait_status("lm", "Running", lambda s: s.get("phase") == "Running")

    job = pax.get("lm")
    assert job is not None
    status = job["status"] | {"hangs": 2}  # a counter the installed CRD does not declare
    status["conditions"] = [*status["conditions"], NEWER_CONDITION]
    custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, pax.namespace, PLURAL, "lm", {**job, "status": status}
    )
    stored = pax.status("lm")
    assert NEWER_CONDITION in stored["conditions"]  # free-form condition types are the CRD's
    assert "hangs" not in stored  # pruned by the apiserver: only the CRD's fields are stored

    pax.kubelet("lm-1", "Failed", exit_code=1)
    restarted = pax.wait_status(
        "lm", "the failure counted", lambda s: s.get("failures") == 1 and s.get("restartAttempt") == 1
    )
    assert NEWER_CONDITION in restarted["conditions"]
    pax.wait_pods("lm", 2, 1)
