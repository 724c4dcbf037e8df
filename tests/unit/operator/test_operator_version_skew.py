"""A PaxJob's status written by another version of the operator (a newer one before `helm rollback`, an older
one before an upgrade) is still reconciled: what this operator does not know is kept and written back."""

from __future__ import annotations

from typing import Any

from pax_operator.core.decide import Observed, decide
from pax_operator.core.observe import pod_view
from pax_operator.spec import ConditionType, PaxJobStatus, Phase
from paxjob_factory import JOB, NOW, make_pod, make_spec

FUTURE_CONDITION = {"type": "CheckpointStale", "status": "True", "reason": "NoCommit", "message": "1 h"}


def newer_operators_status() -> dict[str, Any]:
    """A running gang of two as a later operator wrote it: a condition type and a counter added since."""
    return {
        "phase": "Running",
        "hosts": 2,
        "restartAttempt": 0,
        "gangCreated": True,
        "startTime": "2026-11-25T11:00:00Z",
        "hangs": 2,
        "conditions": [
            {"type": "Created", "status": "True", "reason": "GangCreated"},
            {"type": "Running", "status": "True", "reason": "AllHostsRunning"},
            FUTURE_CONDITION,
        ],
    }


def test_a_newer_operators_status_reads_and_writes_back_unchanged() -> None:
    status = PaxJobStatus.model_validate(newer_operators_status())
    assert status.phase is Phase.RUNNING
    assert [c.type for c in status.conditions] == [ConditionType.CREATED, ConditionType.RUNNING]
    doc = status.to_api()
    assert doc["hangs"] == 2 and doc["conditions"][-1] == FUTURE_CONDITION
    assert PaxJobStatus.model_validate(doc) == status


def test_a_job_with_a_newer_operators_status_is_reconciled() -> None:
    """Host 1 failed: the restart is decided as ever, and the newer operator's fields survive the write."""
    status = PaxJobStatus.model_validate(newer_operators_status())
    pods = [make_pod(0), make_pod(1, phase="Failed", exit_code=1)]
    plan = decide(
        Observed(job=JOB, spec=make_spec(), status=status, pods=[pod_view(p) for p in pods], now=NOW)
    )
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING
    assert plan.status.failures == 1
    doc = plan.status.to_api()
    assert doc["hangs"] == 2 and FUTURE_CONDITION in doc["conditions"]


def test_an_older_operators_status_takes_the_defaults() -> None:
    """Fields added since (reason, message, observedGeneration) are absent: defaults, no error."""
    status = PaxJobStatus.model_validate({"phase": "Running", "restartAttempt": 1, "gangCreated": True})
    assert (status.reason, status.message, status.observed_generation, status.failures) == (
        None,
        None,
        None,
        0,
    )


def test_a_phase_this_operator_does_not_know_is_said_once_not_retried_for_ever() -> None:
    """A newer operator's phase cannot be guessed at: the job is left alone (pods untouched) with one Warning
    naming the field and the likely cause, instead of a reconcile that raises at every retry."""
    from fake_api import FakeApi
    from test_operator_reconcile import cache_with, job_body, make_pod, reconciler, run

    api = FakeApi()
    status = newer_operators_status() | {"phase": "Draining"}
    r = reconciler(cache_with(job_body(status), [make_pod(0), make_pod(1)]), api)
    assert run(r) is None and api.calls == ["POST events"]
    event = api.bodies[0]
    assert event["reason"] == "StatusNotUnderstood" and event["type"] == "Warning"
    assert "status.phase" in event["message"] and "another version of the operator" in event["message"]
    assert run(r) is None and api.calls == ["POST events"]


def test_the_pod_spec_hash_is_the_one_running_gangs_carry() -> None:
    """Pods carry pax.dev/pod-spec-hash and a gang whose hash differs is recreated (the next attempt, the
    steps since the last checkpoint lost). Another hash for the same spec (a field added to
    POD_SHAPING_FIELDS that is set, another serialisation) would recreate every running gang when the operator
    is upgraded, and again at a rollback: these values may not change."""
    from pax_operator.core.render import pod_spec_hash

    assert pod_spec_hash(make_spec()) == "7f601d000c4c3677"
    edited = make_spec(
        image="pax/trainer:2",
        overrides={"learning_rate": "0.01"},
        checkpointIntervalSteps=50,
        tensorboard={"enabled": True},
        podTemplate={"env": [{"name": "A", "value": "1"}], "resources": {"limits": {"memory": "4Gi"}}},
    )
    assert pod_spec_hash(edited) == "d795b9a0da06a9a9"


def test_a_sweep_with_a_newer_operators_status() -> None:
    """A PaxSweep: a phase this operator does not know leaves it alone (no exception retried for ever); a
    top-level field it does not know is written back."""
    from fake_api import FakeApi
    from pax_operator.sweep.reconcile import SweepReconciler
    from pax_operator.sweep.spec import PaxSweepStatus
    from test_sweep_tampering import _sweep_object

    api = FakeApi()
    api.answers["GET paxsweeps"] = {**_sweep_object(), "status": {"phase": "Draining"}}
    api.answers["LIST paxjobs"] = {"items": []}
    assert SweepReconciler(api.clients()).reconcile("ns", "sw") is None
    assert not [call for call in api.calls if call.startswith(("POST", "PUT", "PATCH", "DELETE"))]

    status = PaxSweepStatus.model_validate({"phase": "Running", "trialsQueued": 3})
    assert status.to_api()["trialsQueued"] == 3
