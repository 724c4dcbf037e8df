"""Host outcomes: any host of the current gang stopping abnormally restarts the whole gang (or fails the
job when the budget is spent or the cause is permanent); host 0's result is read as it ends.

A node lost abruptly is seen late: its pod reads as running until the node controller marks it not ready
(40-50 s) and is evicted minutes later, while the peers may already have aborted on lost collectives (a
failure). So a failure beside a scheduled peer that still reads as running is latched only once that peer
ended, or its node's loss showed (then the restart is that host's preemption), or a bounded settle window
after the first failure passed.
"""

from __future__ import annotations

from datetime import timedelta

from pax_contract import Outcome

from pax_operator.core.observe import HostOutcome, classify_host, gang_cause, node_lost
from pax_operator.core.plan import NODE_LOSS_SETTLE_SECONDS, parse_time
from pax_operator.core.policies.context import Pass, restart_or_fail
from pax_operator.core.policies.gang import read_result


def outcomes(p: Pass) -> bool:
    current = p.current
    p.outcomes = {host: classify_host(host, current.get(host)) for host in range(p.hosts)}
    read_result(p, current.get(0))
    cause = gang_cause([o for o in p.outcomes.values() if o is not None])
    if cause is None:
        return False
    if cause.outcome is Outcome.FAILED:
        settled = _settle(p, cause)
        if settled is None:
            return True  # look again when the window ends (a pod event comes earlier)
        cause = settled
    restart_or_fail(p, cause)
    return True


def _settle(p: Pass, cause: HostOutcome) -> HostOutcome | None:
    """The cause to latch for a failure, or None to wait: a peer on a node that stopped reporting makes it
    that host's preemption; a scheduled peer still running defers it up to NODE_LOSS_SETTLE_SECONDS after
    the first failed host finished (no finish time: no wait)."""
    current = p.current
    unsettled = sorted(
        (pod for host, pod in current.items() if p.outcomes.get(host) is None and pod.node_name),
        key=lambda pod: pod.host,
    )
    for pod in unsettled:
        lost = node_lost(pod.host, pod)
        if lost is not None:
            return lost
    if not unsettled:
        return cause
    finished = [
        parse_time(current[o.host].finished_at)
        for o in p.outcomes.values()
        if o is not None and o.outcome is Outcome.FAILED and o.host in current
    ]
    first = min((moment for moment in finished if moment is not None), default=None)
    if first is None:
        return cause
    remaining = (first + timedelta(seconds=NODE_LOSS_SETTLE_SECONDS) - p.observed.now).total_seconds()
    if remaining <= 0:
        return cause
    p.plan.requeue(remaining)
    return None
