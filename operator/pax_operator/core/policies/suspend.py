"""spec.suspend: delete every pod and keep the status; resuming makes a new gang without counting a
restart."""

from __future__ import annotations

from pax_operator.core.plan import Event, clear, set_condition
from pax_operator.core.policies.context import Pass
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
