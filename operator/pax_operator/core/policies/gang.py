"""Restart gating and gang creation: a new gang exists only once every pod of the old one is gone, the
backoff has passed and no foreign pod holds one of its names."""

from __future__ import annotations

from datetime import datetime

from pax_operator.core.observe import PodView, trainer_result
from pax_operator.core.plan import (
    SETTLE_REQUEUE_SECONDS,
    STUCK_DELETION_SECONDS,
    Event,
    format_time,
    parse_time,
    set_condition,
)
from pax_operator.core.policies.context import Pass
from pax_operator.core.policies.grace import parse_outcome, stop_grace
from pax_operator.core.render import render_gang, render_service
from pax_operator.spec import Condition, ConditionType, PaxJobStatus, Phase


def gang(p: Pass) -> bool:
    """While Restarting or not yet created: wait for the old gang, then the backoff, then create."""
    status, now = p.status, p.observed.now
    if status.phase is not Phase.RESTARTING and status.gang_created:
        p.plan.delete(p.stale)  # e.g. a host index beyond the topology
        return False
    stale = p.stale
    if status.phase is Phase.RESTARTING:
        # Host 0 of the old gang may still report where it checkpointed (exit 42 after a preemption).
        old_host0 = next((q for q in stale if q.host == 0 and q.attempt == status.restart_attempt - 1), None)
        read_result(p, old_host0)
        progress = status.progress
        if progress.step_at_restart is not None and progress.step is not None:
            progress.step_at_restart = max(progress.step_at_restart, progress.step)
    # Pods are named by host: the old gang must be gone before the new one exists. Pods of the current
    # attempt are kept: an operator (this one before a crash, or a concurrent one) already made them.
    if stale:
        p.plan.delete(stale, _restart_grace(p))
        _force_stuck(p, stale)
        p.plan.requeue(SETTLE_REQUEUE_SECONDS)
        return True
    restart_after = parse_time(status.restart_after)
    if restart_after is not None and now < restart_after:
        p.plan.requeue((restart_after - now).total_seconds())
        return True
    taken = _names_taken(p)
    if taken:
        blocked(p, "PodNameTaken", taken)
        p.plan.requeue(SETTLE_REQUEUE_SECONDS)
        return True
    _create(p)
    return True


def _restart_grace(p: Pass) -> int | None:
    """The grace period for the old gang of a restart (as restart_or_fail deleted it, should a pod be left:
    a crash between its status write and the deletions), None: the pods' own."""
    last = p.status.last_restart
    if p.status.phase is not Phase.RESTARTING or last is None:
        return None
    return stop_grace(parse_outcome(last.outcome), p.observed.spec.termination_grace_period_seconds)


def read_result(p: Pass, pod0: PodView | None) -> None:
    """Fold the result host 0 wrote as its termination message into the progress."""
    result = trainer_result(pod0)
    if result is None:
        return
    progress = p.status.progress
    if result.final_step is not None:
        progress.step = result.final_step
    if result.last_checkpoint_step is not None:
        progress.last_checkpoint_step = result.last_checkpoint_step
    if result.metrics:
        progress.metrics = dict(result.metrics)
    if result.message:
        progress.message = result.message


def _names_taken(p: Pass) -> str | None:
    """A pod of another owner (a deleted namesake's, still terminating) holds a name the gang needs."""
    wanted = {f"{p.observed.job.name}-{host}" for host in range(p.hosts)}
    for pod in sorted(p.observed.foreign_pods, key=lambda q: q.name):
        if pod.name in wanted:
            state = "terminating, waiting for it to go" if pod.deleting else "not controlled by this PaxJob"
            return f"pod {pod.name} exists and belongs to another owner ({state})"
    return None


def blocked(p: Pass, reason: str, message: str) -> None:
    """The gang cannot be created now: Created=False with the reason, and a Warning (the event recorder
    aggregates repeats). The phase stays (Pending, or Restarting whose new gang waits)."""
    p.status.phase = p.status.phase or Phase.PENDING
    created_false(p.status, reason, message, p.observed.now)
    p.plan.events.append(Event("Warning", reason, message))


def created_false(status: PaxJobStatus, reason: str, message: str, now: datetime) -> None:
    if any(c.type is ConditionType.CREATED for c in status.conditions):
        set_condition(status, ConditionType.CREATED, False, reason, message, now)
        return
    status.conditions.append(
        Condition(
            type=ConditionType.CREATED,
            status="False",
            reason=reason,
            message=message,
            last_transition_time=format_time(now),
        )
    )


def _force_stuck(p: Pass, pods: list[PodView]) -> None:
    """Unscheduled pods have no kubelet to confirm their deletion: remove them outright once overdue."""
    for pod in pods:
        deadline = parse_time(pod.deletion_deadline)
        overdue = (
            deadline is not None and (p.observed.now - deadline).total_seconds() > STUCK_DELETION_SECONDS
        )
        if (
            pod.deleting
            and not pod.node_name
            and overdue
            and (pod.name, pod.uid) not in p.plan.force_delete_pods
        ):
            p.plan.force_delete_pods.append((pod.name, pod.uid))


def _create(p: Pass) -> None:
    spec, now, job, status = p.observed.spec, p.observed.now, p.observed.job, p.status
    attempt = status.restart_attempt
    existing = p.current
    p.plan.service = render_service(job, spec)
    p.plan.create_pods = [
        pod for host, pod in enumerate(render_gang(job, spec, attempt)) if host not in existing
    ]
    message = f"created {spec.topology.hosts} pods (attempt {attempt})"
    status.gang_created = True
    status.phase = Phase.PENDING
    status.restart_after = None
    status.progress.last_progress_time = format_time(now)
    set_condition(status, ConditionType.CREATED, True, "GangCreated", message, now)
    p.plan.events.append(Event("Normal", "GangCreated", message))
    p.plan.requeue(SETTLE_REQUEUE_SECONDS)
