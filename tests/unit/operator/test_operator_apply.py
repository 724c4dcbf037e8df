"""apply_plan's crash-safe order and idempotence, against a recording fake of the API clients."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from pax_operator.core.decide import Event, Plan
from pax_operator.kits import kube
from pax_operator.spec import PaxJobStatus, Phase
from paxjob_factory import NOW

JOB = {
    "apiVersion": "pax.dev/v1alpha1",
    "kind": "PaxJob",
    "metadata": {"name": "lm", "namespace": "ns", "uid": "u"},
}


class Recorder:
    """Stands in for CoreV1Api and CustomObjectsApi; `fail` maps a method name to an HTTP status."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or {}

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            self.calls.append(method)
            if method in self.fail:
                raise ApiException(status=self.fail[method])

        return call


def clients(fail: dict[str, int] | None = None) -> tuple[kube.Clients, Recorder]:
    recorder = Recorder(fail)
    return kube.Clients(core=recorder, custom=recorder), recorder  # type: ignore[arg-type]


def test_status_before_deletions() -> None:
    api, recorder = clients()
    plan = Plan(
        delete_pods=[("lm-0", "a")],
        status=PaxJobStatus(phase=Phase.RESTARTING),
        events=[Event("Warning", "X", "m")],
    )
    kube.apply_plan(api, JOB, plan, NOW)
    assert recorder.calls == [
        "replace_namespaced_custom_object_status",
        "delete_namespaced_pod",
        "create_namespaced_event",
    ]


def test_status_after_creations_and_existing_pods_are_fine() -> None:
    api, recorder = clients({"create_namespaced_pod": 409, "create_namespaced_service": 409})
    plan = Plan(service={}, create_pods=[{}, {}], status=PaxJobStatus(phase=Phase.PENDING, gang_created=True))
    kube.apply_plan(api, JOB, plan, NOW)
    assert recorder.calls == [
        "create_namespaced_service",
        "create_namespaced_pod",
        "create_namespaced_pod",
        "replace_namespaced_custom_object_status",
    ]


def test_conflicting_status_write_stops_before_deleting() -> None:
    api, recorder = clients({"replace_namespaced_custom_object_status": 409})
    plan = Plan(delete_pods=[("lm-0", "a")], status=PaxJobStatus(phase=Phase.RESTARTING))
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, plan, NOW)
    assert "delete_namespaced_pod" not in recorder.calls


def test_gone_pods_and_failed_events_are_not_errors() -> None:
    api, recorder = clients({"delete_namespaced_pod": 404, "create_namespaced_event": 403})
    kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")], events=[Event("Normal", "R", "m")]), NOW)
    assert recorder.calls == [
        "replace_namespaced_custom_object_status",  # the fence: deletions only on a current view
        "delete_namespaced_pod",
        "create_namespaced_event",
    ]


def test_deletions_on_a_stale_view_are_fenced_off() -> None:
    api, recorder = clients({"replace_namespaced_custom_object_status": 409})
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")]), NOW)
    assert recorder.calls == ["replace_namespaced_custom_object_status"]


def test_other_api_errors_propagate() -> None:
    api, _ = clients({"create_namespaced_pod": 403})
    with pytest.raises(ApiException):
        kube.apply_plan(api, JOB, Plan(create_pods=[{}]), NOW)
