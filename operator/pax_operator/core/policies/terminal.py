"""Terminal phases stick: only stop what still runs (as the job's end did: a failed attempt's pods with the
short grace period) and apply ttlSecondsAfterFinished."""

from __future__ import annotations

from pax_operator.core.policies.context import Pass, requeue_ttl
from pax_operator.core.policies.grace import ended_by, stop_grace


def terminal(p: Pass) -> bool:
    if p.status.phase is None or not p.status.phase.is_terminal:
        return False
    p.plan.stop(
        p.observed.pods, stop_grace(ended_by(p.status), p.observed.spec.termination_grace_period_seconds)
    )
    requeue_ttl(p)
    return True
