"""How long the pods of a stopped gang get: their own grace period where their SIGTERM save can succeed (a
preemption, suspend, a spec change, the deadline), at most FAILED_GANG_GRACE_SECONDS where the attempt failed
(a crashed host, a hang, a permanent error): a multi-host save needs every host, and one is dead or the gang
is stuck, so the hosts would only sit out a long grace period while the next gang waits for them."""

from __future__ import annotations

from pax_contract import Outcome

from pax_operator.core.plan import FAILED_GANG_GRACE_SECONDS, condition
from pax_operator.spec import ConditionType, PaxJobStatus, Phase

# Why restart_or_fail ends a job, besides a permanent outcome's own reason.
_BUDGET_REASONS = frozenset({"FailureLimitExceeded", "PreemptionLimitExceeded"})


def stop_grace(outcome: Outcome | None, pods_grace: int) -> int | None:
    """gracePeriodSeconds for deleting a gang stopped because of `outcome` (None: no host outcome, e.g. the
    deadline), whose pods' own grace period is `pods_grace`; None: their own."""
    if outcome in (Outcome.FAILED, Outcome.PERMANENT) and pods_grace > FAILED_GANG_GRACE_SECONDS:
        return FAILED_GANG_GRACE_SECONDS
    return None


def ended_by(status: PaxJobStatus) -> Outcome | None:
    """The host outcome that made the job Failed (restart_or_fail: a budget spent or a permanent error),
    None when something else ended it (the deadline, start-up, success)."""
    failed, last = condition(status, ConditionType.FAILED), status.last_restart
    if status.phase is not Phase.FAILED or failed is None or last is None:
        return None
    outcome = parse_outcome(last.outcome)
    permanent = outcome is Outcome.PERMANENT and failed.reason == last.reason
    return outcome if permanent or failed.reason in _BUDGET_REASONS else None


def parse_outcome(text: str) -> Outcome | None:
    """status.lastRestart.outcome as an Outcome; None for a value this operator does not know."""
    try:
        return Outcome(text)
    except ValueError:
        return None
