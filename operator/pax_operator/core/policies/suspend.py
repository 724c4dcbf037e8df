"""spec.suspend: delete every pod and keep the status; resuming makes a new gang without counting a
restart. A gang made from an older spec (edited while suspended and resumed before the operator saw the
suspension) is recreated the same way."""

from __future__ import annotations

from pax_operator.core.plan import SETTLE_REQUEUE_SECONDS, Event, clear, set_condition
from pax_operator.core.policies.context import Pass
from pax_operator.core.render import pod_spec_hash
from pax_operator.spec import ConditionType, Phase


def suspend(p: Pass) -> bool:
    status, now = p.status, p.observed.now
    if p.observed.spec.suspend:
        if status.phase is not Phase.SUSPENDED:
            message = "spec.suspend is true: pods deleted, status kept"
            status.phase = Phase.SUSPENDED
            status.gang_created = False
            status.restart_after = None
            status.start_time = None
            clear(
                status,
                (ConditionType.RUNNING, ConditionType.RESTARTING, ConditionType.STARTUP_BLOCKED),
                "Suspended",
                message,
                now,
            )
            set_condition(status, ConditionType.SUSPENDED, True, "Suspended", message, now)
            p.plan.events.append(Event("Normal", "Suspended", message))
        p.plan.delete(p.observed.pods)
        return True
    if status.phase is Phase.SUSPENDED:
        message = "spec.suspend is false: recreating the gang"
        status.phase = Phase.PENDING
        if any(c.type is ConditionType.CREATED for c in status.conditions):  # a gang existed before
            status.restart_attempt += 1
        set_condition(status, ConditionType.SUSPENDED, False, "Resumed", message, now)
        p.plan.events.append(Event("Normal", "Resumed", message))
        return False
    return _outdated_gang(p)


def _outdated_gang(p: Pass) -> bool:
    """The live gang's pods were made from other values of the fields that may change only while
    suspended: recreate it as a resume would (next attempt, no restart counted)."""
    status, now = p.status, p.observed.now
    if not status.gang_created or status.phase is Phase.RESTARTING:
        return False
    wanted = pod_spec_hash(p.observed.spec)
    outdated = [pod for pod in p.current.values() if pod.alive and pod.spec_hash not in (None, wanted)]
    if not outdated:
        return False
    message = (
        f"pod {outdated[0].name} was made from an older spec (edited while suspended, resumed before the "
        "operator saw it): recreating the gang"
    )
    status.phase = Phase.PENDING
    status.gang_created = False
    status.restart_attempt += 1
    clear(status, (ConditionType.RUNNING, ConditionType.STARTUP_BLOCKED), "SpecChanged", message, now)
    p.plan.events.append(Event("Normal", "SpecChanged", message))
    p.plan.delete(p.observed.pods)
    p.plan.requeue(SETTLE_REQUEUE_SECONDS)
    return True
