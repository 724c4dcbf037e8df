"""apply_plan's crash-safe order and idempotence, and the aggregated event recorder, against a recording fake
of the API clients."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from pax_operator.adapters import kube
from pax_operator.adapters.events import EventRecorder
from pax_operator.core.decide import Event, Plan
from pax_operator.spec import PaxJobStatus, Phase
from paxjob_factory import NOW

JOB = {
    "apiVersion": "pax.dev/v1alpha1",
    "kind": "PaxJob",
    "metadata": {"name": "lm", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
}


class Response:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.data = json.dumps(doc).encode()


class Recorder:
    """Stands in for CoreV1Api and CustomObjectsApi; `fail` maps a method name to an HTTP status; reads of a
    pod answer `pods[name]`."""

    def __init__(self, fail: dict[str, int] | None = None, pods: dict[str, dict] | None = None) -> None:
        self.calls: list[str] = []
        self.bodies: list[Any] = []
        self.fail = fail or {}
        self.pods = pods or {}
        self.api_client = None

    def __getattr__(self, method: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Response:
            self.calls.append(method)
            self.bodies.append(kwargs.get("body", args[-1] if args else None))
            assert kwargs.get("_request_timeout") == kube.TIMEOUT  # every request is bounded
            if method in self.fail:
                raise ApiException(status=self.fail[method])
            if method == "read_namespaced_pod":
                return Response(self.pods[args[0]])
            return Response(
                {"metadata": {"uid": f"new-{len(self.calls)}", "name": "e", "resourceVersion": "2"}}
            )

        return call


def clients(
    fail: dict[str, int] | None = None, pods: dict[str, dict] | None = None
) -> tuple[kube.Clients, Recorder]:
    recorder = Recorder(fail, pods)
    return kube.Clients(core=recorder, custom=recorder, networking=recorder), recorder  # type: ignore[arg-type]


def test_status_before_deletions() -> None:
    api, recorder = clients()
    plan = Plan(delete_pods=[("lm-0", "a")], status=PaxJobStatus(phase=Phase.RESTARTING))
    applied = kube.apply_plan(api, JOB, plan)
    assert recorder.calls == ["replace_namespaced_custom_object_status", "delete_namespaced_pod"]
    assert applied.deleted == ["a"] and applied.job is not None
    assert applied.job["metadata"]["resourceVersion"] == "2"  # the cache's newest copy


def test_owned_objects_then_pods_then_status_and_existing_pods_are_fine() -> None:
    api, recorder = clients(
        {"create_namespaced_pod": 409, "create_namespaced_service": 409},
        pods={"lm-0": {"metadata": {"ownerReferences": [{"uid": "u", "controller": True}]}}},
    )
    service = {"kind": "Service", "metadata": {"name": "lm", "namespace": "ns"}}
    pods = [{"metadata": {"name": "lm-0"}}]
    plan = Plan(
        service=service, create_pods=pods, status=PaxJobStatus(phase=Phase.PENDING, gang_created=True)
    )
    kube.apply_plan(api, JOB, plan)
    assert recorder.calls == [
        "create_namespaced_service",
        "create_namespaced_pod",
        "read_namespaced_pod",  # AlreadyExists: ours, made before an operator restart
        "replace_namespaced_custom_object_status",
    ]


def test_a_name_held_by_a_foreign_pod_is_reported_not_counted_as_created() -> None:
    foreign = {
        "metadata": {"ownerReferences": [{"uid": "old", "controller": True}], "deletionTimestamp": "x"}
    }
    api, recorder = clients({"create_namespaced_pod": 409}, pods={"lm-1": foreign})
    plan = Plan(create_pods=[{"metadata": {"name": "lm-1"}}], status=PaxJobStatus(gang_created=True))
    with pytest.raises(kube.NamesTaken, match=r"lm-1 exists and belongs to another owner \(terminating"):
        kube.apply_plan(api, JOB, plan)
    assert "replace_namespaced_custom_object_status" not in recorder.calls  # gangCreated is not recorded


def test_conflicting_status_write_stops_before_deleting() -> None:
    api, recorder = clients({"replace_namespaced_custom_object_status": 409})
    plan = Plan(delete_pods=[("lm-0", "a")], status=PaxJobStatus(phase=Phase.RESTARTING))
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, plan)
    assert "delete_namespaced_pod" not in recorder.calls


def test_gone_pods_are_not_errors_and_forced_deletion_has_grace_zero() -> None:
    api, recorder = clients({"delete_namespaced_pod": 404})
    kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")], force_delete_pods=[("lm-1", "b")]))
    assert recorder.calls == [
        "replace_namespaced_custom_object_status",  # the fence: deletions only on a current view
        "delete_namespaced_pod",
        "delete_namespaced_pod",
    ]
    graceful, forced = recorder.bodies[1:]
    assert "gracePeriodSeconds" not in graceful and forced["gracePeriodSeconds"] == 0
    assert (graceful["preconditions"]["uid"], forced["preconditions"]["uid"]) == ("a", "b")


def test_deletions_on_a_stale_view_are_fenced_off() -> None:
    api, recorder = clients({"replace_namespaced_custom_object_status": 409})
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")]))
    assert recorder.calls == ["replace_namespaced_custom_object_status"]


def test_other_api_errors_propagate() -> None:
    api, _ = clients({"create_namespaced_pod": 403})
    with pytest.raises(ApiException):
        kube.apply_plan(api, JOB, Plan(create_pods=[{"metadata": {"name": "lm-0"}}]))


def test_repeated_events_are_aggregated_into_one_with_a_count() -> None:
    api, recorder = clients()
    events = EventRecorder(api)
    warning = Event("Warning", "FailedCreatePod", "forbidden")
    for _ in range(3):
        events.post(JOB, warning, NOW)
    events.post(JOB, Event("Warning", "FailedCreatePod", "another message"), NOW)
    assert recorder.calls == [
        "create_namespaced_event",
        "patch_namespaced_event",
        "patch_namespaced_event",
        "create_namespaced_event",
    ]
    assert [body["count"] for body in recorder.bodies[1:3]] == [2, 3]


def test_an_expired_aggregated_event_is_posted_again_and_failures_only_log() -> None:
    api, recorder = clients({"patch_namespaced_event": 404})
    events = EventRecorder(api)
    events.post(JOB, Event("Warning", "R", "m"), NOW)
    events.post(JOB, Event("Warning", "R", "m"), NOW)
    assert recorder.calls == ["create_namespaced_event", "patch_namespaced_event", "create_namespaced_event"]
    broken, _ = clients({"create_namespaced_event": 403})
    EventRecorder(broken).post(JOB, Event("Normal", "R", "m"), NOW)  # logged, not raised


def test_token_bucket_allows_a_burst_then_paces_at_qps() -> None:
    now = [0.0]
    bucket = kube.TokenBucket(qps=10, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # reservations queue up
    now[0] = 10.0
    assert bucket.reserve() == 0.0  # refilled (up to the burst)
    assert kube.TokenBucket(qps=0, burst=1).reserve() == 0.0  # unlimited
