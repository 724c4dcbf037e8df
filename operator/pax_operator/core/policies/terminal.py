"""Terminal phases stick: only stop what still runs and apply ttlSecondsAfterFinished."""

from __future__ import annotations

from pax_operator.core.policies.context import Pass, requeue_ttl


def terminal(p: Pass) -> bool:
    if p.status.phase is None or not p.status.phase.is_terminal:
        return False
    p.plan.stop(p.observed.pods)
    requeue_ttl(p)
    return True
