"""activeDeadlineSeconds: Failed (DeadlineExceeded) this long after the job first tried to start (a resume
starts the clock again); paused while suspended. As for batch/v1 Jobs, the clock starts whether or not the
pods can be created: a job whose pods are refused for ever (a ResourceQuota, admission) still ends."""

from __future__ import annotations

from datetime import datetime, timedelta

from pax_operator.core.plan import format_time, parse_time
from pax_operator.core.policies.context import Pass, finish
from pax_operator.spec import PaxJobSpec, PaxJobStatus, Phase


def deadline(p: Pass) -> bool:
    spec, now = p.observed.spec, p.observed.now
    start_clock(p.status, spec, now)
    started = parse_time(p.status.start_time)
    if spec.active_deadline_seconds is None or started is None or spec.suspend:
        return False
    remaining = (started + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
    if remaining <= 0:
        message = f"ran longer than activeDeadlineSeconds={spec.active_deadline_seconds} ({_reached(p)})"
        finish(p, Phase.FAILED, "DeadlineExceeded", message)
        return True
    p.plan.requeue(remaining)
    return False


def _reached(p: Pass) -> str:
    """How far the job got: the step (of how many) and the last checkpoint."""
    progress = p.status.progress
    if progress.step is None:
        return "before its first step"
    total = f" of {progress.num_train_steps}" if progress.num_train_steps is not None else ""
    checkpoint = progress.last_checkpoint_step
    saved = f", last checkpoint {checkpoint}" if checkpoint is not None and checkpoint >= 0 else ""
    return f"stopped at step {progress.step}{total}{saved}"


def start_clock(status: PaxJobStatus, spec: PaxJobSpec, now: datetime) -> None:
    """status.startTime: the first pass that tries to start the (unsuspended, unfinished) job sets it;
    suspending clears it."""
    if status.start_time is None and not spec.suspend and not (status.phase and status.phase.is_terminal):
        status.start_time = format_time(now)
