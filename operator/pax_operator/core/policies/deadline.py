"""activeDeadlineSeconds: Failed (DeadlineExceeded) this long after the gang (re)started; paused while
suspended."""

from __future__ import annotations

from datetime import timedelta

from pax_operator.core.plan import parse_time
from pax_operator.core.policies.context import Pass, finish
from pax_operator.spec import Phase


def deadline(p: Pass) -> bool:
    spec, now = p.observed.spec, p.observed.now
    started = parse_time(p.status.start_time)
    if spec.active_deadline_seconds is None or started is None or spec.suspend:
        return False
    remaining = (started + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
    if remaining <= 0:
        message = f"ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}"
        finish(p, Phase.FAILED, "DeadlineExceeded", message)
        return True
    p.plan.requeue(remaining)
    return False
