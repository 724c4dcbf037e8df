"""The reconcile decision as a pure state machine: creation, restarts, budgets, suspend, TTL, hangs."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest
from pax_contract import TrainerResult
from pax_operator.core.decide import Observed, Scrape, creation_refused, decide, format_time
from pax_operator.core.observe import pod_view
from pax_operator.core.render import render_gang
from pax_operator.spec import ConditionType, PaxJobStatus, Phase
from paxjob_factory import JOB, NOW, make_pod, make_spec, step


def condition(status: PaxJobStatus, kind: ConditionType) -> str | None:
    return next((c.status for c in status.conditions if c.type is kind), None)


def running_status(**extra: Any) -> PaxJobStatus:
    """A gang of two, attempt 0, created and running."""
    plan = step()
    assert plan.status is not None
    plan = step(plan.status, [make_pod(0), make_pod(1)])
    assert plan.status is not None and plan.status.phase is Phase.RUNNING
    return plan.status.model_copy(update=extra)


def test_new_job_creates_service_and_gang() -> None:
    plan = step()
    assert plan.service is not None and plan.service["metadata"]["name"] == "lm"
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["lm-0", "lm-1"]
    assert plan.status is not None
    assert (plan.status.phase, plan.status.hosts, plan.status.gang_created) == (Phase.PENDING, 2, True)
    assert plan.status.start_time == format_time(NOW)
    assert condition(plan.status, ConditionType.CREATED) == "True"
    assert [e.reason for e in plan.events] == ["GangCreated"]


def test_operator_restart_mid_creation_creates_only_missing_pods() -> None:
    plan = step(None, [make_pod(0, phase="Pending")])
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["lm-1"]
    assert plan.delete_pods == []


def test_reconcile_is_idempotent_once_running() -> None:
    status = running_status()
    plan = step(status, [make_pod(0), make_pod(1)], now_plus=1)
    assert (plan.create_pods, plan.delete_pods, plan.status, plan.events) == ([], [], None, [])
    assert plan.requeue_after is not None


def test_pending_until_every_host_runs() -> None:
    status = step().status
    plan = step(status, [make_pod(0), make_pod(1, phase="Pending")])
    assert plan.status is None  # still Pending: nothing to write
    plan = step(status, [make_pod(0), make_pod(1)])
    assert plan.status is not None and plan.status.phase is Phase.RUNNING
    assert condition(plan.status, ConditionType.RUNNING) == "True"
    assert [e.reason for e in plan.events] == ["Running"]


def test_success_when_every_host_succeeded_reads_the_result() -> None:
    result = TrainerResult(
        exit_reason="completed",
        final_step=100,
        last_checkpoint_step=100,
        metrics={"eval/loss": 1.5},
        message="done",
    ).to_json()
    pods = [
        make_pod(0, phase="Succeeded", exit_code=0, message=result),
        make_pod(1, phase="Succeeded", exit_code=0),
    ]
    plan = step(running_status(), pods, now_plus=5)
    assert plan.status is not None and plan.status.phase is Phase.SUCCEEDED
    assert plan.status.completion_time == format_time(NOW + timedelta(seconds=5))
    assert plan.status.progress.step == 100 and plan.status.progress.metrics == {"eval/loss": 1.5}
    assert condition(plan.status, ConditionType.SUCCEEDED) == "True"
    assert condition(plan.status, ConditionType.RUNNING) == "False"
    assert plan.delete_pods == []  # finished pods stay for their logs


def test_a_diverged_result_is_written_as_strict_json_and_read_back() -> None:
    """NaN is a result (PaxSweep's valueForNaN reads it), but a literal NaN in the status body makes the
    apiserver refuse every write: it goes by name in nonFiniteMetrics, and the next pass sees no change."""
    result = TrainerResult(
        exit_reason="completed", final_step=100, last_checkpoint_step=100, metrics={"train/loss": math.nan}
    ).to_json()
    pods = [
        make_pod(0, phase="Succeeded", exit_code=0, message=result),
        make_pod(1, phase="Succeeded", exit_code=0),
    ]
    plan = step(running_status(), pods)
    assert plan.status is not None and plan.status.phase is Phase.SUCCEEDED
    stored = json.loads(json.dumps(plan.status.to_api(), allow_nan=False))
    assert (
        stored["progress"]["nonFiniteMetrics"] == {"train/loss": "NaN"}
        and "metrics" not in stored["progress"]
    )
    again = PaxJobStatus.model_validate(stored)
    assert math.isnan(again.progress.metrics["train/loss"])
    assert step(again, pods).status is None


@pytest.mark.parametrize("field", ["final_step", "last_checkpoint_step"])
@pytest.mark.parametrize("value", ['"12"', "true", "1.5", "-1", str(2**63)])
def test_a_result_with_a_malformed_step_is_no_result(field: str, value: str) -> None:
    """Host 0's message is the trainer's to write, but user code runs there too: a step that is not an int64
    makes the message no result (classified by the exit code), never an exception in every pass."""
    message = json.dumps({"exit_reason": "crashed", field: json.loads(value)})
    plan = step(running_status(), [make_pod(0, phase="Failed", exit_code=1, message=message), make_pod(1)])
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING
    assert plan.status.progress.step is None and plan.status.progress.last_checkpoint_step is None


def test_host_0_done_waits_for_the_others() -> None:
    plan = step(running_status(), [make_pod(0, phase="Succeeded", exit_code=0), make_pod(1)])
    assert plan.status is None and plan.delete_pods == []


@pytest.mark.parametrize(
    ("pod1", "reason"),
    [
        (make_pod(1, phase="Failed", exit_code=42), "Preempted"),
        (make_pod(1, phase="Failed", exit_code=143), "Terminated"),
        (make_pod(1, disruption="EvictionByEvictionAPI"), "EvictionByEvictionAPI"),
        (make_pod(1, deleting=True), "PodDeleted"),
        (None, "PodDeleted"),
    ],
)
def test_preemption_restarts_whole_gang_and_counts_a_preemption(pod1: dict | None, reason: str) -> None:
    status = running_status()
    status.progress.step = 130
    status.progress.last_checkpoint_step = 100
    pods = [make_pod(0)] + ([pod1] if pod1 else [])
    plan = step(status, pods, now_plus=10)
    new = plan.status
    assert new is not None and new.phase is Phase.RESTARTING
    assert (new.restart_attempt, new.restarts, new.preemptions, new.failures) == (1, 1, 1, 0)
    assert new.progress.steps_lost == 0  # settled when the new gang starts: the old one may still save
    assert new.restart_after == format_time(NOW + timedelta(seconds=20))  # default backoff 10 s
    assert new.last_restart is not None and new.last_restart.reason == reason
    assert condition(new, ConditionType.RESTARTING) == "True"
    assert condition(new, ConditionType.RUNNING) == "False"
    deleted = {name for name, _ in plan.delete_pods}
    assert "lm-0" in deleted  # the healthy host goes too: jax.distributed cannot re-admit one process
    assert plan.events[0].type == "Warning" and "attempt 1" in plan.events[0].message
    # The scraped checkpoint is a floor: the old gang may still save during its grace period.
    assert "from checkpoint step 100 or later" in plan.events[0].message
    assert plan.create_pods == []


def test_an_oom_killed_host_spends_the_failure_budget_not_the_preemption_budget() -> None:
    """Exit 137 is SIGKILL, a preemption when it comes from outside; the kubelet's OOMKilled comes again at
    the same step, so it is a failure (maxFailures, default 3), not one of up to 100 preemptions."""
    oom = make_pod(1, phase="Failed", exit_code=137)
    oom["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    new = step(running_status(), [make_pod(0), oom], now_plus=10).status
    assert new is not None and new.phase is Phase.RESTARTING
    assert (new.restarts, new.preemptions, new.failures) == (1, 0, 1)
    assert new.last_restart is not None and new.last_restart.reason == "OOMKilled"
    assert "resources.limits.memory" in new.last_restart.message
    killed = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=137)]).status
    assert killed is not None and (killed.preemptions, killed.failures) == (1, 0)


def test_restarting_waits_for_old_gang_then_backoff_then_recreates_next_attempt() -> None:
    status = step(
        running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], now_plus=10
    ).status
    assert status is not None and status.failures == 1
    # Old pods still there (terminating): delete the rest, create nothing.
    plan = step(status, [make_pod(0, deleting=True), make_pod(1, phase="Failed", exit_code=1)], now_plus=11)
    assert plan.create_pods == [] and plan.delete_pods == [("lm-1", "pod-1-0")]
    # Gone, but within backoff: wait.
    plan = step(status, [], now_plus=15)
    assert plan.create_pods == [] and plan.requeue_after == pytest.approx(5)
    # After backoff: attempt 1.
    plan = step(status, [], now_plus=21)
    assert [p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in plan.create_pods] == ["1", "1"]
    assert plan.status is not None and plan.status.phase is Phase.PENDING and plan.status.gang_created
    # Running again clears Restarting.
    plan = step(plan.status, [make_pod(0, 1), make_pod(1, 1)], now_plus=22)
    assert plan.status is not None and plan.status.phase is Phase.RUNNING
    assert condition(plan.status, ConditionType.RESTARTING) == "False"
    assert plan.status.restarts == 1


def test_failure_budget_exhausted_fails_with_reason() -> None:
    spec = make_spec(restartPolicy={"maxFailures": 1})
    status = running_status(failures=1, restarts=1)
    plan = step(status, [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.failures == 2 and plan.status.restarts == 1
    failed = next(c for c in plan.status.conditions if c.type is ConditionType.FAILED)
    assert failed.reason == "FailureLimitExceeded"
    assert "failure 2/1 exceeds the budget (restartPolicy.maxFailures)" in failed.message
    assert plan.delete_pods == [("lm-0", "pod-0-0")]  # running hosts are stopped; finished ones kept


def test_preemptions_have_their_own_budget() -> None:
    spec = make_spec(restartPolicy={"maxFailures": 0, "maxPreemptions": 5})
    plan = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=42)], spec)
    assert plan.status is not None and plan.status.phase is Phase.RESTARTING
    spec = make_spec(restartPolicy={"maxPreemptions": 0})
    plan = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=42)], spec)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.conditions[-1].reason == "PreemptionLimitExceeded"


def test_config_error_fails_at_once_without_restart() -> None:
    plan = step(running_status(), [make_pod(0, phase="Failed", exit_code=2), make_pod(1)])
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.restarts == 0 and plan.status.failures == 0
    assert condition(plan.status, ConditionType.FAILED) == "True"
    assert plan.status.conditions[-1].reason == "ConfigError"


def test_terminal_states_stick() -> None:
    done = step(
        running_status(),
        [make_pod(0, phase="Succeeded", exit_code=0), make_pod(1, phase="Succeeded", exit_code=0)],
    )
    status = done.status
    assert status is not None
    for pods in ([], [make_pod(0, phase="Failed", exit_code=1)]):
        plan = step(status, pods, now_plus=100)
        assert plan.status is None and plan.create_pods == [] and plan.service is None


def test_ttl_deletes_the_finished_job() -> None:
    spec = make_spec(ttlSecondsAfterFinished=60)
    status = running_status(phase=Phase.SUCCEEDED, completion_time=format_time(NOW))
    plan = step(status, [], spec, now_plus=30)
    assert not plan.delete_job and plan.requeue_after == pytest.approx(30)
    finished = [make_pod(0, phase="Succeeded", exit_code=0), make_pod(1, phase="Succeeded", exit_code=0)]
    plan = step(status, finished, spec, now_plus=60)
    assert plan.delete_job and plan.create_pods == []
    assert plan.delete_pods == [("lm-0", "pod-0-0"), ("lm-1", "pod-1-0")]


def test_suspend_deletes_pods_keeps_status_and_resume_recreates() -> None:
    status = running_status(restarts=2, preemptions=2)
    status.progress.last_checkpoint_step = 40
    plan = step(status, [make_pod(0), make_pod(1)], make_spec(suspend=True))
    new = plan.status
    assert new is not None and new.phase is Phase.SUSPENDED
    assert (new.restarts, new.preemptions, new.progress.last_checkpoint_step) == (2, 2, 40)
    assert sorted(plan.delete_pods) == [("lm-0", "pod-0-0"), ("lm-1", "pod-1-0")]
    assert condition(new, ConditionType.SUSPENDED) == "True"
    # Still suspended, pods gone: nothing to do.
    assert step(new, [], make_spec(suspend=True)).status is None
    plan = step(new, [], make_spec(suspend=False), now_plus=50)
    assert plan.status is not None and plan.status.phase is Phase.PENDING
    assert [p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in plan.create_pods] == ["1", "1"]
    assert condition(plan.status, ConditionType.SUSPENDED) == "False"
    assert plan.status.restarts == 2  # resuming is not a restart
    assert {e.reason for e in plan.events} == {"Resumed", "GangCreated"}


def test_created_suspended_creates_nothing_and_resumes_as_attempt_0() -> None:
    plan = step(None, [], make_spec(suspend=True))
    assert plan.create_pods == [] and plan.status is not None and plan.status.phase is Phase.SUSPENDED
    plan = step(plan.status, [], make_spec(suspend=False))
    assert [p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in plan.create_pods] == ["0", "0"]


def test_active_deadline_exceeded() -> None:
    spec = make_spec(activeDeadlineSeconds=100)
    status = running_status()
    plan = step(status, [make_pod(0), make_pod(1)], spec, now_plus=50)
    assert plan.status is None and plan.requeue_after is not None and plan.requeue_after <= 50
    plan = step(status, [make_pod(0), make_pod(1)], spec, now_plus=100)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert plan.status.conditions[-1].reason == "DeadlineExceeded"
    assert len(plan.delete_pods) == 2


def test_scrape_updates_progress_and_hang_restarts_as_failure() -> None:
    spec = make_spec(hangTimeoutSeconds=60)
    status = running_status()
    pods = [make_pod(0), make_pod(1)]
    scrape = Scrape(step=10, last_checkpoint_step=-1, loss=2.5, steps_per_second=1.25, num_train_steps=100)
    plan = step(status, pods, spec, now_plus=30, scrape=scrape)
    assert plan.status is not None
    progress = plan.status.progress
    assert (progress.step, progress.last_checkpoint_step, progress.num_train_steps) == (10, None, 100)
    assert progress.metrics == {"train/loss": 2.5} and progress.last_progress_time == format_time(
        NOW + timedelta(seconds=30)
    )
    # Same step 59 s later: fine; 60 s later: hang.
    assert step(plan.status, pods, spec, now_plus=89, scrape=Scrape(step=10)).status is None
    hang = step(plan.status, pods, spec, now_plus=90, scrape=Scrape(step=10), metrics_answered=True)
    assert hang.status is not None and hang.status.phase is Phase.RESTARTING
    assert hang.status.failures == 1 and hang.status.last_restart is not None
    assert hang.status.last_restart.reason == "Hang"
    assert "host 0 made no step progress at step 10 for 60s" in hang.status.last_restart.message


def test_a_hang_needs_a_look_at_host_0_after_the_hang_clock_ran_out() -> None:
    """Scrapes come every --scrape-interval (10 s), hangTimeoutSeconds may be 10 s: when the clock runs out
    the latest scrape is older than that, and a healthy trainer's next one would show progress. The old
    rule restarted such a gang (Hang) on the stale scrape; a hang now needs a look taken at least
    hangTimeoutSeconds after the last progress (answered or silent) that shows none."""
    spec = make_spec(hangTimeoutSeconds=10)
    pods = [make_pod(0), make_pod(1)]
    at = NOW + timedelta(seconds=30)
    first = step(running_status(), pods, spec, now_plus=30, scrape=Scrape(step=10, checked_at=at))
    assert first.status is not None and first.status.progress.last_progress_time == format_time(at)
    stale = Scrape(step=10, checked_at=at)  # the latest look is the one that saw the progress
    plan = step(first.status, pods, spec, now_plus=40, scrape=stale, metrics_answered=True)
    assert plan.status is None and plan.requeue_after is not None and plan.requeue_after <= 1
    later = Scrape(step=10, checked_at=at + timedelta(seconds=9.9))  # looked too soon to tell
    assert step(first.status, pods, spec, now_plus=41, scrape=later, metrics_answered=True).status is None
    looked = Scrape(step=10, checked_at=at + timedelta(seconds=10))  # 10 s on, no progress: hung
    hang = step(first.status, pods, spec, now_plus=42, scrape=looked, metrics_answered=True)
    assert hang.status is not None and hang.status.last_restart is not None
    assert hang.status.last_restart.reason == "Hang"
    moved = Scrape(step=11, checked_at=at + timedelta(seconds=12))  # progress: the clock starts over
    plan = step(first.status, pods, spec, now_plus=42, scrape=moved, metrics_answered=True)
    assert plan.status is not None and plan.status.phase is Phase.RUNNING and plan.status.failures == 0


def test_stale_pods_of_an_old_attempt_are_deleted_before_creation() -> None:
    status = PaxJobStatus(phase=Phase.PENDING, restart_attempt=2, gang_created=False)
    plan = step(status, [make_pod(0, 1, phase="Failed", exit_code=1)])
    assert plan.delete_pods == [("lm-0", "pod-0-1")] and plan.create_pods == []


def test_foreign_host_indexes_are_removed_while_running() -> None:
    plan = step(running_status(), [make_pod(0), make_pod(1), make_pod(7)])
    assert plan.delete_pods == [("lm-7", "pod-7-0")] and plan.status is None


def test_status_serialises_camel_case_without_nulls() -> None:
    doc = running_status().to_api()
    assert doc["phase"] == "Running" and doc["restartAttempt"] == 0 and doc["gangCreated"] is True
    assert "completionTime" not in doc
    assert {c["type"] for c in doc["conditions"]} == {"Created", "Running"}


def test_restarting_reads_the_checkpoint_host_0_reported_while_going_away() -> None:
    status = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=42)]).status
    assert status is not None and status.phase is Phase.RESTARTING
    result = TrainerResult(exit_reason="preempted", final_step=37, last_checkpoint_step=30).to_json()
    going = make_pod(0, phase="Failed", exit_code=42, message=result, deleting=True)
    plan = step(status, [going], now_plus=1)
    assert plan.status is not None and plan.status.progress.last_checkpoint_step == 30
    assert plan.create_pods == []
    assert "metrics" not in plan.status.to_api()["progress"]


def test_silent_metrics_never_count_as_a_hang() -> None:
    spec = make_spec(hangTimeoutSeconds=60)
    plan = step(running_status(), [make_pod(0), make_pod(1)], spec, now_plus=3600)
    assert plan.status is None and plan.delete_pods == []


def test_refused_creation_reads_pending_with_created_false() -> None:
    observed = Observed(job=JOB, spec=make_spec(), status=PaxJobStatus(), pods=[], now=NOW)
    status = creation_refused(observed, "pods are forbidden: violates PodSecurity")
    assert status.phase is Phase.PENDING and status.hosts == 2
    (created,) = status.conditions
    assert (created.type, created.status, created.reason) == (
        ConditionType.CREATED,
        "False",
        "FailedCreatePod",
    )


def test_the_deadline_bounds_a_job_whose_pods_are_refused_for_ever() -> None:
    """The clock starts at the first try (as batch/v1 Job's), not at a gang creation that never happens."""
    spec = make_spec(activeDeadlineSeconds=100)
    observed = Observed(job=JOB, spec=spec, status=PaxJobStatus(), pods=[], now=NOW)
    refused = creation_refused(observed, "pods is forbidden: exceeded quota")
    assert refused.start_time == format_time(NOW) and not refused.gang_created
    plan = step(refused, [], spec, now_plus=99)
    assert plan.requeue_after is not None and plan.requeue_after <= 1 and len(plan.create_pods) == 2
    plan = step(refused, [], spec, now_plus=100)
    assert plan.status is not None and plan.status.phase is Phase.FAILED and plan.create_pods == []
    assert plan.status.conditions[-1].reason == "DeadlineExceeded"


def test_the_deadline_clock_waits_while_suspended_and_restarts_on_resume() -> None:
    spec = make_spec(activeDeadlineSeconds=100, suspend=True)
    suspended = step(None, [], spec).status
    assert suspended is not None and suspended.start_time is None
    observed = Observed(job=JOB, spec=spec, status=suspended, pods=[], now=NOW)
    assert creation_refused(observed, "refused").start_time is None
    plan = step(suspended, [], make_spec(activeDeadlineSeconds=100), now_plus=500)
    assert plan.status is not None and plan.status.start_time == format_time(NOW + timedelta(seconds=500))


def test_restarting_keeps_pods_of_the_new_attempt_made_before_a_crash() -> None:
    status = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=1)]).status
    assert status is not None and status.restart_attempt == 1
    plan = step(status, [make_pod(0, 1, phase="Pending")], now_plus=30)
    assert plan.delete_pods == []
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["lm-1"]
    assert plan.status is not None and plan.status.gang_created and plan.status.failures == 1


def test_unscheduled_pods_stuck_in_deletion_are_forced() -> None:
    status = step(running_status(), [make_pod(0), make_pod(1, phase="Failed", exit_code=143)]).status
    assert status is not None
    stuck = make_pod(0, deleting=True)  # deletionTimestamp 11:59:00, no node, nothing will confirm it
    assert step(status, [stuck], now_plus=-55).force_delete_pods == []  # 11:59:05: give it a moment
    plan = step(status, [stuck], now_plus=0)
    assert plan.force_delete_pods == [("lm-0", "pod-0-0")] and plan.create_pods == []
    stuck["spec"] = {"nodeName": "node-a"}  # a kubelet owns it: wait
    assert step(status, [stuck]).force_delete_pods == []


def blocked_pod(host: int, reason: str = "ImagePullBackOff", **extra: Any) -> dict[str, Any]:
    pod = make_pod(host, phase="Pending")
    pod["status"]["containerStatuses"] = [
        {"name": "trainer", "state": {"waiting": {"reason": reason, "message": "pull access denied"}}}
    ]
    pod.update(extra)
    return pod


def test_a_pod_that_cannot_start_is_reported_then_fails_the_job_at_the_startup_deadline() -> None:
    status = step().status
    assert status is not None
    plan = step(status, [make_pod(0, phase="Pending"), blocked_pod(1)], now_plus=5)
    assert plan.status is not None and plan.status.phase is Phase.PENDING
    blocked = next(c for c in plan.status.conditions if c.type is ConditionType.STARTUP_BLOCKED)
    assert (blocked.status, blocked.reason) == ("True", "ImagePullBackOff")
    assert "lm-1" in blocked.message and "pull access denied" in blocked.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ImagePullBackOff")]
    assert plan.requeue_after == pytest.approx(300)
    # Still blocked a minute later: no new event, the deadline clock keeps running from the first sighting.
    again = step(plan.status, [make_pod(0, phase="Pending"), blocked_pod(1)], now_plus=65)
    assert again.status is None and again.events == [] and again.requeue_after == pytest.approx(240)
    failed = step(plan.status, [make_pod(0, phase="Pending"), blocked_pod(1)], now_plus=305)
    assert failed.status is not None and failed.status.phase is Phase.FAILED
    assert condition(failed.status, ConditionType.FAILED) == "True"
    assert failed.status.conditions[-1].reason == "ImagePullBackOff"
    assert "start-up deadline" in failed.status.conditions[-1].message
    assert failed.status.failures == 0 and sorted(failed.delete_pods) == [
        ("lm-0", "pod-0-0"),
        ("lm-1", "pod-1-0"),
    ]


@pytest.mark.parametrize("reason", ["InvalidImageName", "ErrImagePull", "CreateContainerConfigError"])
def test_every_start_blocking_reason_sets_the_condition(reason: str) -> None:
    plan = step(step().status, [blocked_pod(0, reason), make_pod(1, phase="Pending")])
    assert plan.status is not None and condition(plan.status, ConditionType.STARTUP_BLOCKED) == "True"


def test_unschedulable_pods_block_start_up_and_clear_when_scheduled() -> None:
    pod = make_pod(1, phase="Pending")
    pod["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: cpu"}
    ]
    plan = step(step().status, [make_pod(0, phase="Pending"), pod])
    assert plan.status is not None and plan.status.conditions[-1].reason == "Unschedulable"
    assert "0/3 nodes: cpu" in plan.status.conditions[-1].message
    running = step(plan.status, [make_pod(0), make_pod(1)], now_plus=10)
    assert running.status is not None and running.status.phase is Phase.RUNNING
    assert condition(running.status, ConditionType.STARTUP_BLOCKED) == "False"


def test_a_slow_image_pull_is_not_blocked() -> None:
    plan = step(step().status, [blocked_pod(0, "ContainerCreating"), make_pod(1, phase="Pending")])
    assert plan.status is None and plan.events == []


def foreign(pod: dict[str, Any], owner: str, *, deleting: bool = False) -> dict[str, Any]:
    pod["metadata"]["ownerReferences"] = [{"uid": owner, "controller": True}]
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2026-11-25T11:59:00Z"
    return pod


def test_a_namesake_pod_of_a_deleted_job_is_waited_for_never_a_preemption() -> None:
    old = pod_view(foreign(make_pod(1), "uid-of-the-deleted-job", deleting=True))
    observed = Observed(
        job=JOB, spec=make_spec(), status=PaxJobStatus(), pods=[], now=NOW, foreign_pods=[old]
    )
    plan = decide(observed)
    assert plan.create_pods == [] and plan.delete_pods == [] and plan.requeue_after is not None
    assert plan.status is not None and not plan.status.gang_created and plan.status.preemptions == 0
    created = next(c for c in plan.status.conditions if c.type is ConditionType.CREATED)
    assert (created.status, created.reason) == ("False", "PodNameTaken")
    assert "lm-1" in created.message and "terminating" in created.message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "PodNameTaken")]
    # Gone: the gang is created.
    plan = decide(Observed(job=JOB, spec=make_spec(), status=plan.status, pods=[], now=NOW))
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["lm-0", "lm-1"]


def test_foreign_pods_of_other_names_do_not_hold_the_gang() -> None:
    other = pod_view(foreign(make_pod(5, job="lm"), "someone"))
    observed = Observed(
        job=JOB, spec=make_spec(), status=PaxJobStatus(), pods=[], now=NOW, foreign_pods=[other]
    )
    assert len(decide(observed).create_pods) == 2


def test_policies_run_in_the_documented_order() -> None:
    from pax_operator.core.decide import POLICIES

    names = [policy.__name__ for policy in POLICIES]
    assert names == ["terminal", "deadline", "suspend", "gang", "outcomes", "success", "startup", "progress"]


def test_suspend_outranks_a_host_failure_and_the_deadline_outranks_suspend_resume() -> None:
    status = running_status()
    plan = step(status, [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], make_spec(suspend=True))
    assert plan.status is not None and plan.status.phase is Phase.SUSPENDED and plan.status.failures == 0
    spec = make_spec(activeDeadlineSeconds=10)
    plan = step(status, [make_pod(0), make_pod(1, phase="Failed", exit_code=1)], spec, now_plus=20)
    assert plan.status is not None and plan.status.conditions[-1].reason == "DeadlineExceeded"
    assert plan.status.failures == 0


def test_tensorboard_url_follows_host_0_of_the_current_gang() -> None:
    spec = make_spec(tensorboard={"enabled": True, "port": 6007})
    plan = step(step(spec=spec).status, [make_pod(0), make_pod(1)], spec)
    assert plan.status is not None and plan.status.tensorboard_url == "http://10.0.0.1:6007/"
    assert plan.status.to_api()["tensorboardURL"] == "http://10.0.0.1:6007/"
    moved = make_pod(0, attempt=1)
    moved["status"]["podIP"] = "10.0.9.9"
    restarted = plan.status.model_copy(update={"restart_attempt": 1})
    plan = step(restarted, [moved, make_pod(1, attempt=1)], spec)
    assert plan.status is not None and plan.status.tensorboard_url == "http://10.0.9.9:6007/"
    assert running_status().tensorboard_url is None  # no sidecar, no URL


def on_node(
    pod: dict[str, Any], node: str, *, finished_s: float | None = None, node_lost: bool = False
) -> dict[str, Any]:
    """`pod` scheduled on `node`; its trainer finished `finished_s` seconds after NOW; with `node_lost`,
    marked not ready by the node lifecycle controller (Ready False, ContainersReady still True: the kubelet
    stopped reporting)."""
    pod["spec"] = {"nodeName": node}
    if finished_s is not None:
        at = format_time(NOW + timedelta(seconds=finished_s))
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = at
    ready = "False" if node_lost else "True"
    pod["status"]["conditions"] = [
        {"type": "Ready", "status": ready},
        {"type": "ContainersReady", "status": "True"},
    ]
    return pod


def test_peers_aborting_on_a_lost_node_are_a_preemption_not_a_failure() -> None:
    """A node lost abruptly: its pod still reads Running (the kubelet stopped reporting) and only the node
    controller's Ready=False shows it, minutes before the taint manager's DisruptionTarget. The peers abort
    on lost collectives (exit 1) first: that is the lost host's preemption, not a failure."""
    lost = on_node(make_pod(0), "node-a", node_lost=True)
    peer = on_node(make_pod(1, phase="Failed", exit_code=1), "node-b", finished_s=5)
    new = step(running_status(), [lost, peer], now_plus=6).status
    assert new is not None and new.phase is Phase.RESTARTING
    assert (new.preemptions, new.failures) == (1, 0)
    assert new.last_restart is not None
    assert (new.last_restart.reason, new.last_restart.host) == ("NodeLost", 0)


def test_a_failure_beside_a_running_peer_settles_briefly_then_counts_as_a_failure() -> None:
    """Peers may abort before the node controller notices a lost node: a failure while a scheduled peer
    still runs is latched only once that peer ended too, or after a bounded settle window."""
    running = on_node(make_pod(0), "node-a")
    failed = on_node(make_pod(1, phase="Failed", exit_code=1), "node-b", finished_s=5)
    waiting = step(running_status(), [running, failed], now_plus=10)
    assert waiting.status is None and waiting.delete_pods == [] and waiting.events == []
    assert waiting.requeue_after == pytest.approx(10)  # bounded: 15 s after the first host failed
    new = step(running_status(), [running, failed], now_plus=21).status
    assert new is not None and (new.preemptions, new.failures) == (0, 1)
    # Every host ended: nothing left to learn, latched at once.
    peer_done = on_node(make_pod(0, phase="Failed", exit_code=1), "node-a", finished_s=6)
    new = step(running_status(), [peer_done, failed], now_plus=7).status
    assert new is not None and (new.preemptions, new.failures) == (0, 1)
    # A config error or a preemption never waits.
    config = on_node(make_pod(1, phase="Failed", exit_code=2), "node-b", finished_s=5)
    failed_at_once = step(running_status(), [running, config], now_plus=6).status
    assert failed_at_once is not None and failed_at_once.phase is Phase.FAILED


def test_an_edit_made_while_suspended_reaches_the_gang_even_if_the_suspension_was_never_seen() -> None:
    """suspend: true, then a new image with suspend: false, both before the operator looked (it was down,
    or the job waited in a backoff): the gang of the old image kept running and the edit, allowed only
    while suspended, took effect at some later restart. Pods carry a hash of the spec fields that shape them;
    a gang made from an older one is recreated (from the last checkpoint) without counting a restart."""
    old = make_spec()
    status = running_status()
    pods = [pod | {"status": make_pod(host)["status"]} for host, pod in enumerate(render_gang(JOB, old, 0))]
    assert step(status, pods, old).delete_pods == []
    live_edit = make_spec(restartPolicy={"maxFailures": 9}, ttlSecondsAfterFinished=5, hangTimeoutSeconds=60)
    assert step(status, pods, live_edit).delete_pods == []  # edits allowed on a live job steer it in place
    new = make_spec(image="pax/trainer:2")
    plan = step(status, pods, new)
    assert {name for name, _ in plan.delete_pods} == {"lm-0", "lm-1"}
    assert plan.status is not None and plan.status.phase is Phase.PENDING
    assert plan.status.restart_attempt == 1 and not plan.status.gang_created
    assert (plan.status.restarts, plan.status.failures, plan.status.preemptions) == (0, 0, 0)
    assert [event.reason for event in plan.events] == ["SpecChanged"]
    created = step(plan.status, [], new, now_plus=1).create_pods
    assert [pod["spec"]["containers"][0]["image"] for pod in created] == ["pax/trainer:2"] * 2


def _oom_pod(host: int) -> dict[str, Any]:
    pod = make_pod(host, phase="Failed", exit_code=137)
    pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    return pod


def _ended(status: PaxJobStatus, pods: list[dict[str, Any]], **spec: Any) -> PaxJobStatus:
    plan = step(status, pods, make_spec(**spec))
    assert plan.status is not None
    return plan.status


def test_status_reason_and_message_say_why_the_job_is_in_its_phase() -> None:
    """`kubectl get pj` shows status.reason (and -o wide status.message): for each common failure, the
    reason and the words of the condition that explains the phase, the trainer's own line included."""
    said = TrainerResult(
        exit_reason="config_error", message="unknown hyperparameter 'learning_rat'"
    ).to_json()
    config = _ended(running_status(), [make_pod(0, phase="Failed", exit_code=2, message=said), make_pod(1)])
    assert (config.phase, config.reason) == (Phase.FAILED, "ConfigError")
    assert config.message is not None and "unknown hyperparameter 'learning_rat'" in config.message
    oom = _ended(running_status(), [make_pod(0), _oom_pod(1)])
    assert (oom.phase, oom.reason) == (Phase.RESTARTING, "OOMKilled")
    assert oom.message is not None and "resources.limits.memory" in oom.message and "attempt 1" in oom.message
    exhausted = _ended(
        running_status(preemptions=1, restarts=1),
        [make_pod(0), make_pod(1, phase="Failed", exit_code=143)],
        restartPolicy={"maxPreemptions": 1},
    )
    assert (exhausted.phase, exhausted.reason) == (Phase.FAILED, "PreemptionLimitExceeded")
    assert exhausted.message is not None
    assert "preemption 2/1 exceeds the budget (restartPolicy.maxPreemptions)" in exhausted.message
    late = step(
        running_status(), [make_pod(0), make_pod(1)], make_spec(activeDeadlineSeconds=10), now_plus=10
    )
    assert late.status is not None and (late.status.phase, late.status.reason) == (
        Phase.FAILED,
        "DeadlineExceeded",
    )
    assert late.status.message == "ran longer than activeDeadlineSeconds=10 (before its first step)"
    trained = running_status()
    trained.progress = trained.progress.model_copy(
        update={"step": 120, "num_train_steps": 300, "last_checkpoint_step": 100}
    )
    later = step(trained, [make_pod(0), make_pod(1)], make_spec(activeDeadlineSeconds=10), now_plus=10).status
    assert later is not None and later.message == (
        "ran longer than activeDeadlineSeconds=10 (stopped at step 120 of 300, last checkpoint 100)"
    )
    pending = step().status
    assert pending is not None and (pending.reason, pending.message) == (None, None)  # nothing to explain yet
    blocked = step(pending, [make_pod(0, phase="Pending"), blocked_pod(1)], now_plus=5).status
    assert blocked is not None and (blocked.phase, blocked.reason) == (Phase.PENDING, "ImagePullBackOff")
    assert blocked.message is not None and "pull access denied" in blocked.message
    started = step(blocked, [make_pod(0), make_pod(1)], now_plus=6).status
    assert started is not None and (started.phase, started.reason) == (Phase.RUNNING, "AllHostsRunning")
    refused = creation_refused(
        Observed(job=JOB, spec=make_spec(), status=PaxJobStatus(), pods=[], now=NOW), "x" * 5000
    )
    assert refused.reason == "FailedCreatePod"
    assert refused.message is not None and len(refused.message) == 1024 and refused.message.endswith("...")
    assert refused.to_api()["reason"] == "FailedCreatePod"


@pytest.mark.parametrize("exit_code", [1, 0])
def test_a_forged_pod_with_the_gangs_labels_and_owner_does_not_stand_in_for_a_host(exit_code: int) -> None:
    """Anyone allowed to create pods could add one controlled by the job (its uid is readable) with host 0's
    labels and current attempt under another name: its exit failed and restarted the job (1), or finished
    it (0). It is stale now: deleted, and the real gang runs on."""
    forged = make_pod(0, phase="Failed" if exit_code else "Succeeded", exit_code=exit_code)
    forged["metadata"] |= {"name": "zz-forged", "uid": "forged"}
    plan = step(running_status(), [make_pod(0), make_pod(1), forged])
    assert plan.status is None, plan.status  # nothing changes: Running, attempt 0, no failure
    assert plan.delete_pods == [("zz-forged", "forged")] and not plan.create_pods, plan
