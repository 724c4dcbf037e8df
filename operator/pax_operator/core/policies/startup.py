"""Pods that cannot start by themselves (bad image, missing ConfigMap/Secret, unschedulable): condition
StartupBlocked and a Warning at once; the job fails once a pod has been blocked for the start-up deadline."""

from __future__ import annotations

from datetime import timedelta

from pax_operator.core.plan import Event, clear, condition, parse_time, set_condition
from pax_operator.core.policies.context import Pass, finish
from pax_operator.spec import ConditionType, Phase


def startup(p: Pass) -> bool:
    status, now = p.status, p.observed.now
    if status.phase is not Phase.PENDING or not status.gang_created:
        return False
    blocked = [(host, pod.name, pod.blocked) for host, pod in sorted(p.current.items()) if pod.blocked]
    if not blocked:
        clear(status, (ConditionType.STARTUP_BLOCKED,), "Starting", "no pod is blocked", now)
        return False
    _, pod, why = blocked[0]
    reason, _, detail = why.partition(": ")
    message = f"pod {pod}: {reason}: {detail}" + (
        f" (and {len(blocked) - 1} more)" if len(blocked) > 1 else ""
    )
    before = condition(status, ConditionType.STARTUP_BLOCKED)
    set_condition(status, ConditionType.STARTUP_BLOCKED, True, reason, message, now)
    if before is None or before.status != "True" or before.reason != reason:
        p.plan.events.append(Event("Warning", reason, message))
    since = parse_time(condition(status, ConditionType.STARTUP_BLOCKED).last_transition_time) or now
    limit = p.observed.startup_deadline_seconds
    remaining = (since + timedelta(seconds=limit) - now).total_seconds()
    if remaining <= 0:
        finish(p, Phase.FAILED, reason, f"{message}; not started within the {int(limit)}s start-up deadline")
        return True
    p.plan.requeue(remaining)
    return False
