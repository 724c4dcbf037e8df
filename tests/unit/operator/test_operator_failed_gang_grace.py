"""A gang stopped because its attempt failed (a crashed host, a hang, a permanent error, a failure budget
spent) is deleted with at most FAILED_GANG_GRACE_SECONDS: it cannot save (a multi-host save needs every
host), so a long spec.terminationGracePeriodSeconds would only hold up the next gang. Where the SIGTERM save
can succeed (preemptions, suspend, a spec change, the deadline) the pods keep their own grace period."""

from __future__ import annotations

from typing import Any

import pytest
from fake_api import FakeApi
from pax_operator.adapters import kube
from pax_operator.core.decide import Plan, Scrape
from pax_operator.core.observe import pod_view
from pax_operator.core.plan import FAILED_GANG_GRACE_SECONDS
from pax_operator.spec import DEFAULT_TERMINATION_GRACE_SECONDS, PaxJobSpec, PaxJobStatus, Phase
from paxjob_factory import make_pod, make_spec, step

LONG = 3600
SHORT = FAILED_GANG_GRACE_SECONDS


def running(spec: PaxJobSpec, **extra: Any) -> PaxJobStatus:
    created = step(None, [], spec).status
    status = step(created, [make_pod(0), make_pod(1)], spec).status
    assert status is not None and status.phase is Phase.RUNNING
    return status.model_copy(update=extra)


def graces(plan: Plan) -> dict[str, int | None]:
    """Each deleted pod's gracePeriodSeconds, None: the pod's own."""
    return {name: plan.delete_grace.get(uid) for name, uid in plan.delete_pods}


def test_the_short_grace_is_kubernetes_default() -> None:
    assert SHORT == DEFAULT_TERMINATION_GRACE_SECONDS == 30


@pytest.mark.parametrize(
    ("pod1", "reason"),
    [
        (make_pod(1, phase="Failed", exit_code=1), "Crashed"),
        (make_pod(1, phase="Failed", exit_code=3), "StorageError"),
        (make_pod(1, phase="Failed", exit_code=139), "Error"),  # SIGSEGV: a crash below Python
        (make_pod(1, phase="Failed", reason="UnexpectedAdmissionError"), "UnexpectedAdmissionError"),
    ],
)
def test_a_restart_after_a_host_failed_gives_the_old_gang_the_short_grace(
    pod1: dict[str, Any], reason: str
) -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    plan = step(running(spec), [make_pod(0), pod1], spec)
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING and plan.status.failures == 1
    assert plan.status.last_restart is not None and plan.status.last_restart.reason == reason
    assert graces(plan) == {"lm-0": SHORT, "lm-1": SHORT}


def test_an_oom_killed_host_is_a_failure_too() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    oom = make_pod(1, phase="Failed", exit_code=137)
    oom["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    plan = step(running(spec), [make_pod(0), oom], spec)
    assert plan.status is not None and plan.status.last_restart is not None
    assert plan.status.last_restart.reason == "OOMKilled"
    assert graces(plan) == {"lm-0": SHORT, "lm-1": SHORT}


def test_a_hang_restart_gives_the_hung_gang_the_short_grace() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG, hangTimeoutSeconds=60)
    pods = [make_pod(0), make_pod(1)]
    moving = step(
        running(spec), pods, spec, now_plus=30, scrape=Scrape(step=10), metrics_answered=True
    ).status
    hang = step(moving, pods, spec, now_plus=90, scrape=Scrape(step=10), metrics_answered=True)
    assert hang.status is not None and hang.status.phase is Phase.RESTARTING
    assert hang.status.last_restart is not None and hang.status.last_restart.reason == "Hang"
    assert graces(hang) == {"lm-0": SHORT, "lm-1": SHORT}


def test_a_failure_that_fails_the_job_stops_it_with_the_short_grace() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG, restartPolicy={"maxFailures": 0})
    plan = step(running(spec), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.conditions[-1].reason == "FailureLimitExceeded"
    assert graces(plan) == {"lm-0": SHORT}  # the failed pod stays for its logs


def test_a_permanent_error_stops_the_others_with_the_short_grace() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    plan = step(running(spec), [make_pod(0), make_pod(1, phase="Failed", exit_code=2)], spec)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert graces(plan) == {"lm-0": SHORT}


@pytest.mark.parametrize("grace", [1, 10, SHORT])
def test_a_grace_period_already_short_is_never_lengthened(grace: int) -> None:
    spec = make_spec(terminationGracePeriodSeconds=grace)
    plan = step(running(spec), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec)
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING
    assert graces(plan) == {"lm-0": None, "lm-1": None} and plan.delete_grace == {}


@pytest.mark.parametrize(
    "pod1",
    [
        make_pod(1, phase="Failed", exit_code=42),  # saved with its peers on SIGTERM
        make_pod(1, phase="Failed", exit_code=143),
        make_pod(1, phase="Failed", exit_code=137),
        make_pod(1, disruption="PreemptionByScheduler"),  # being evicted: SIGTERM'd, saving
        make_pod(1, deleting=True),  # deleted by someone else
        make_pod(1, phase="Failed", reason="Evicted"),
        None,  # gone
    ],
)
def test_a_preemption_restart_keeps_the_pods_own_grace(pod1: dict[str, Any] | None) -> None:
    """A preempted host's SIGTERM reaches its peers (they agree on a step and save together): the save
    can succeed and the next gang resumes from it, so it gets the whole grace period."""
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    plan = step(running(spec), [make_pod(0), *([pod1] if pod1 else [])], spec)
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING
    assert plan.status.preemptions == 1 and plan.status.failures == 0
    assert plan.delete_grace == {} and "lm-0" in graces(plan)


def test_a_node_lost_preemption_keeps_the_pods_own_grace() -> None:
    """A node that stopped reporting may only be cut off from the apiserver: its host and the others may
    still reach each other and save."""
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    lost = make_pod(1)
    lost["spec"] = {"nodeName": "node-b"}
    lost["status"]["conditions"] = [
        {"type": "Ready", "status": "False"},
        {"type": "ContainersReady", "status": "True"},
    ]
    failed = make_pod(0, phase="Failed", exit_code=1)
    plan = step(running(spec), [failed, lost], spec)
    assert plan.status is not None and plan.status.last_restart is not None
    assert plan.status.last_restart.reason == "NodeLost"
    assert plan.delete_grace == {} and graces(plan) == {"lm-0": None, "lm-1": None}


def test_preemptions_beyond_the_budget_keep_the_pods_own_grace() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG, restartPolicy={"maxPreemptions": 0})
    plan = step(running(spec), [make_pod(0), make_pod(1, disruption="PreemptionByScheduler")], spec)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.conditions[-1].reason == "PreemptionLimitExceeded"
    assert plan.delete_grace == {} and set(graces(plan)) == {"lm-0", "lm-1"}


def test_suspend_a_spec_change_and_the_deadline_keep_the_pods_own_grace() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    pods = [make_pod(0), make_pod(1)]
    suspended = step(running(spec), pods, make_spec(terminationGracePeriodSeconds=LONG, suspend=True))
    assert suspended.status is not None and suspended.status.phase is Phase.SUSPENDED
    assert suspended.delete_grace == {} and set(graces(suspended)) == {"lm-0", "lm-1"}

    outdated = make_pod(0)
    outdated["metadata"]["annotations"] = {"pax.dev/pod-spec-hash": "an-older-spec"}
    changed = step(running(spec), [outdated, make_pod(1)], spec)
    assert changed.events[-1].reason == "SpecChanged"
    assert changed.delete_grace == {} and set(graces(changed)) == {"lm-0", "lm-1"}

    timed = make_spec(terminationGracePeriodSeconds=LONG, activeDeadlineSeconds=100)
    late = step(running(timed), pods, timed, now_plus=100)
    assert late.status is not None and late.status.conditions[-1].reason == "DeadlineExceeded"
    assert late.delete_grace == {} and set(graces(late)) == {"lm-0", "lm-1"}


def test_pods_left_by_a_crash_mid_restart_get_the_restarts_grace() -> None:
    """The status was written (Restarting) but the deletions were not: the next pass deletes the old gang
    as the restart would have, by the recorded cause."""
    spec = make_spec(terminationGracePeriodSeconds=LONG)
    old = [make_pod(0), make_pod(1)]
    failed = step(running(spec), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec).status
    assert failed is not None
    assert graces(step(failed, old, spec)) == {"lm-0": SHORT, "lm-1": SHORT}
    preempted = step(running(spec), [make_pod(0), make_pod(1, disruption="Evicted")], spec).status
    assert preempted is not None
    assert graces(step(preempted, old, spec)) == {"lm-0": None, "lm-1": None}


def test_a_failed_job_stops_a_pod_left_alive_as_its_end_did() -> None:
    spec = make_spec(terminationGracePeriodSeconds=LONG, restartPolicy={"maxFailures": 0})
    failed = step(running(spec), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec).status
    assert failed is not None and failed.phase is Phase.FAILED
    assert graces(step(failed, [make_pod(0)], spec)) == {"lm-0": SHORT}
    timed = make_spec(terminationGracePeriodSeconds=LONG, activeDeadlineSeconds=100)
    late = step(running(timed), [make_pod(0), make_pod(1)], timed, now_plus=100).status
    assert late is not None and late.phase is Phase.FAILED
    assert graces(step(late, [make_pod(0)], timed, now_plus=101)) == {"lm-0": None}


def test_the_shortest_grace_asked_for_wins() -> None:
    pods = [pod_view(make_pod(0)), pod_view(make_pod(1))]
    plan = Plan()
    plan.delete(pods[:1])
    plan.delete(pods, grace=SHORT)
    plan.delete(pods)
    plan.delete(pods[1:], grace=5)
    assert graces(plan) == {"lm-0": SHORT, "lm-1": 5}


def test_the_adapter_sends_the_short_grace_only_for_those_pods() -> None:
    api = FakeApi()
    plan = Plan(delete_pods=[("lm-0", "a"), ("lm-1", "b")], delete_grace={"a": SHORT})
    kube.apply_plan(api.clients(), {"metadata": {"name": "lm", "namespace": "ns", "uid": "u"}}, plan)
    deletions = {body["preconditions"]["uid"]: body for body in api.bodies if "preconditions" in body}
    assert deletions["a"]["gracePeriodSeconds"] == SHORT and "gracePeriodSeconds" not in deletions["b"]
