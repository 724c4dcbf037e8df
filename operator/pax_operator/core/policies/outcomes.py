"""Host outcomes: any host of the current gang stopping abnormally restarts the whole gang (or fails the
job when the budget is spent or the cause is permanent); host 0's result is read as it ends."""

from __future__ import annotations

from pax_operator.core.observe import classify_host, gang_cause
from pax_operator.core.policies.context import Pass, restart_or_fail
from pax_operator.core.policies.gang import read_result


def outcomes(p: Pass) -> bool:
    current = p.current
    p.outcomes = {host: classify_host(host, current.get(host)) for host in range(p.hosts)}
    read_result(p, current.get(0))
    cause = gang_cause([o for o in p.outcomes.values() if o is not None])
    if cause is None:
        return False
    restart_or_fail(p, cause)
    return True
