"""The state one decision pass works on, and the transitions several policies share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from pax_contract import Outcome

from pax_operator.core.observe import HostOutcome, PodView
from pax_operator.core.plan import (
    SETTLE_REQUEUE_SECONDS,
    Event,
    Observed,
    Plan,
    clear,
    format_time,
    parse_time,
    set_condition,
)
from pax_operator.core.policies.grace import stop_grace
from pax_operator.core.render import pod_name
from pax_operator.spec import ConditionType, LastRestart, PaxJobStatus, Phase


@dataclass
class Pass:
    """One decision pass: `status` and `plan` are built up by the policies in order."""

    observed: Observed
    status: PaxJobStatus
    plan: Plan = field(default_factory=Plan)
    outcomes: dict[int, HostOutcome | None] = field(default_factory=dict)  # filled by the outcomes policy

    @property
    def hosts(self) -> int:
        return self.observed.spec.topology.hosts

    def is_current(self, pod: PodView) -> bool:
        """Of the current attempt, at a host of the topology, and under that host's name: a pod someone
        else created with this job as its controller and the gang's labels (pod authors can read the
        uid and attempt) counts as stale, and goes, instead of standing in for a host (its exit failing,
        restarting or finishing the job)."""
        return (
            pod.attempt == self.status.restart_attempt
            and 0 <= pod.host < self.hosts
            and pod.name == pod_name(self.observed.job.name, pod.host)
        )

    @property
    def current(self) -> dict[int, PodView]:
        """The pods of the current gang, by host."""
        return {pod.host: pod for pod in self.observed.pods if self.is_current(pod)}

    @property
    def stale(self) -> list[PodView]:
        """Pods of other attempts or of host indexes beyond the topology."""
        return [pod for pod in self.observed.pods if not self.is_current(pod)]


def finish(p: Pass, phase: Phase, reason: str, message: str, grace: int | None = None) -> None:
    """Enter a terminal phase: conditions, event, running pods stopped (with `grace`, see Plan.delete), TTL
    clock started."""
    status, now = p.status, p.observed.now
    status.phase = phase
    status.completion_time = format_time(now)
    status.restart_after = None
    kind = ConditionType.SUCCEEDED if phase is Phase.SUCCEEDED else ConditionType.FAILED
    clear(
        status,
        (ConditionType.RUNNING, ConditionType.RESTARTING, ConditionType.SUSPENDED),
        reason,
        message,
        now,
    )
    set_condition(status, kind, True, reason, message, now)
    p.plan.events.append(Event("Normal" if phase is Phase.SUCCEEDED else "Warning", reason, message))
    p.plan.stop(p.observed.pods, grace)
    requeue_ttl(p)


def requeue_ttl(p: Pass) -> None:
    """Delete a finished job once ttlSecondsAfterFinished has passed; until then look again when it is due."""
    ttl = p.observed.spec.ttl_seconds_after_finished
    finished = parse_time(p.status.completion_time)
    if ttl is None or finished is None:
        return
    remaining = (finished + timedelta(seconds=ttl) - p.observed.now).total_seconds()
    if remaining <= 0:  # pods go now, not whenever the garbage collector gets to them
        p.plan.delete(p.observed.pods)
        p.plan.delete_job = True
        p.plan.events.append(Event("Normal", "TTLExpired", f"deleting the finished job after {ttl}s"))
    else:
        p.plan.requeue(remaining)


def restart_or_fail(p: Pass, cause: HostOutcome) -> None:
    """Gang restart within budget, else Failed. Counters move once: the status leaves Pending/Running here."""
    status, now, policy = p.status, p.observed.now, p.observed.spec.restart_policy
    status.last_restart = LastRestart(
        outcome=str(cause.outcome),
        reason=cause.reason,
        message=cause.message,
        host=cause.host,
        exit_code=cause.exit_code,
    )
    # A failed attempt's gang cannot save: its pods get a short grace period (policies/grace.py).
    grace = stop_grace(cause.outcome, p.observed.spec.termination_grace_period_seconds)
    if cause.outcome is Outcome.PERMANENT:
        finish(p, Phase.FAILED, cause.reason, f"{cause.message}: permanent, not restarted", grace)
        return
    if cause.outcome is Outcome.PREEMPTED:
        status.preemptions += 1
        exhausted = status.preemptions > policy.max_preemptions
        budget = f"preemption {status.preemptions}/{policy.max_preemptions}"
    else:
        status.failures += 1
        exhausted = status.failures > policy.max_failures
        budget = f"failure {status.failures}/{policy.max_failures}"
    if exhausted:
        preempted = cause.outcome is Outcome.PREEMPTED
        reason = "PreemptionLimitExceeded" if preempted else "FailureLimitExceeded"
        limit = "restartPolicy.maxPreemptions" if preempted else "restartPolicy.maxFailures"
        finish(p, Phase.FAILED, reason, f"{cause.message}; {budget} exceeds the budget ({limit})", grace)
        return
    progress = status.progress
    # stepsLost is settled at the new gang's first scrape (where it really resumed): during its grace
    # period the old gang may still checkpoint past what was last scraped.
    if progress.step is not None:
        progress.step_at_restart = max(progress.step_at_restart or 0, progress.step)
    status.restarts += 1
    status.restart_attempt += 1
    status.gang_created = False
    status.phase = Phase.RESTARTING
    status.restart_after = format_time(now + timedelta(seconds=policy.backoff_seconds))
    resume = progress.last_checkpoint_step
    message = (
        f"{cause.message} ({cause.reason}, {budget}); restarting the gang as attempt {status.restart_attempt}"
        # The hosts may still save in their grace period: the new gang resumes from the newest commit.
        + (f" from checkpoint step {resume} or later" if resume is not None and resume >= 0 else "")
    )
    clear(status, (ConditionType.STARTUP_BLOCKED,), cause.reason, message, now)
    set_condition(status, ConditionType.RUNNING, False, cause.reason, message, now)
    set_condition(status, ConditionType.RESTARTING, True, cause.reason, message, now)
    p.plan.events.append(Event("Warning", cause.reason, message))
    p.plan.delete(p.observed.pods, grace)
    p.plan.requeue(SETTLE_REQUEUE_SECONDS)
