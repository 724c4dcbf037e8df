"""The reconcile decision: observed PaxJob + pods (+ scraped progress) → a plan. Pure: no I/O, no clock.

`decide` runs the policies in `POLICIES` order on one pass; the first that ends the pass wins. The order is
the precedence (docs/operator.md, "Policies"): a terminal phase sticks; the deadline outranks everything
that would keep the job going; suspend outranks restarts; a gang is created only when its predecessor is
gone; a host's abnormal end outranks success; start-up blocks and progress are looked at last.
"""

from __future__ import annotations

from collections.abc import Callable

from pax_operator.core.plan import Event, Observed, Plan, Scrape, format_time, parse_time, summarize
from pax_operator.core.policies.context import Pass
from pax_operator.core.policies.deadline import deadline, start_clock
from pax_operator.core.policies.gang import created_false, gang
from pax_operator.core.policies.outcomes import outcomes
from pax_operator.core.policies.progress import progress
from pax_operator.core.policies.startup import startup
from pax_operator.core.policies.success import success
from pax_operator.core.policies.suspend import suspend
from pax_operator.core.policies.terminal import terminal
from pax_operator.spec import PaxJobStatus, Phase

__all__ = [
    "POLICIES",
    "Event",
    "Observed",
    "Plan",
    "Scrape",
    "creation_refused",
    "decide",
    "format_time",
    "parse_time",
]

type Policy = Callable[[Pass], bool]
POLICIES: tuple[Policy, ...] = (terminal, deadline, suspend, gang, outcomes, success, startup, progress)


def decide(observed: Observed) -> Plan:
    """Compute the next step of a PaxJob's state machine."""
    status = observed.status.model_copy(deep=True)
    status.hosts = observed.spec.topology.hosts
    status.observed_generation = observed.generation
    if status.phase is None:
        status.phase = Phase.PENDING
    p = Pass(observed, status)
    for policy in POLICIES:
        if policy(p):
            break
    summarize(status)
    if status != observed.status:
        p.plan.status = status
    return p.plan


def creation_refused(observed: Observed, message: str, reason: str = "FailedCreatePod") -> PaxJobStatus:
    """Status after the apiserver refused the gang's pods (admission, quota, a name taken by a foreign pod):
    Pending (or still Restarting), Created=False. The deadline's clock runs from this first try."""
    status = observed.status.model_copy(deep=True)
    status.phase = status.phase or Phase.PENDING
    status.hosts = observed.spec.topology.hosts
    start_clock(status, observed.spec, observed.now)
    created_false(status, reason, message, observed.now)
    summarize(status)
    return status
