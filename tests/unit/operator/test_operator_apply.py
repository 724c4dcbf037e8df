"""apply_plan's crash-safe order and idempotence, and the aggregated event recorder, against a recording fake
of the API clients."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fake_api import FakeApi
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


def clients(
    fail: dict[str, int] | None = None, pods: dict[str, dict] | None = None
) -> tuple[kube.Clients, FakeApi]:
    """Fake clients; `fail` maps a request label to an HTTP status; a pod read answers the one in `pods`."""
    api = FakeApi()
    api.fail.update(fail or {})
    for pod in (pods or {}).values():
        api.answers["GET pods"] = pod
    return api.clients(), api


def test_status_before_deletions() -> None:
    api, recorder = clients()
    plan = Plan(delete_pods=[("lm-0", "a")], status=PaxJobStatus(phase=Phase.RESTARTING))
    applied = kube.apply_plan(api, JOB, plan)
    assert recorder.calls == ["PUT paxjobs/status", "DELETE pods"]
    assert applied.deleted == ["a"] and applied.job is not None
    assert applied.job["metadata"]["resourceVersion"] == "101"  # the write's answer: the cache's newest copy


def test_owned_objects_then_pods_then_status_and_existing_pods_are_fine() -> None:
    api, recorder = clients(
        {"POST pods": 409, "POST services": 409},
        pods={"lm-0": {"metadata": {"ownerReferences": [{"uid": "u", "controller": True}]}}},
    )
    recorder.answers["GET services"] = {"metadata": {"ownerReferences": [{"uid": "u", "controller": True}]}}
    service = {"kind": "Service", "metadata": {"name": "lm", "namespace": "ns"}}
    pods = [{"metadata": {"name": "lm-0"}}]
    plan = Plan(
        service=service, create_pods=pods, status=PaxJobStatus(phase=Phase.PENDING, gang_created=True)
    )
    kube.apply_plan(api, JOB, plan)
    assert recorder.calls == [
        "POST services",
        "GET services",  # AlreadyExists: ours (another's would block the gang)
        "POST pods",
        "GET pods",  # AlreadyExists: ours, made before an operator restart
        "PUT paxjobs/status",
    ]


def test_a_name_held_by_a_foreign_pod_is_reported_not_counted_as_created() -> None:
    foreign = {
        "metadata": {"ownerReferences": [{"uid": "old", "controller": True}], "deletionTimestamp": "x"}
    }
    api, recorder = clients({"POST pods": 409}, pods={"lm-1": foreign})
    plan = Plan(create_pods=[{"metadata": {"name": "lm-1"}}], status=PaxJobStatus(gang_created=True))
    with pytest.raises(kube.NamesTaken, match=r"lm-1 exists and belongs to another owner \(terminating"):
        kube.apply_plan(api, JOB, plan)
    assert "PUT paxjobs/status" not in recorder.calls  # gangCreated is not recorded


def test_conflicting_status_write_stops_before_deleting() -> None:
    api, recorder = clients({"PUT paxjobs/status": 409})
    plan = Plan(delete_pods=[("lm-0", "a")], status=PaxJobStatus(phase=Phase.RESTARTING))
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, plan)
    assert "DELETE pods" not in recorder.calls


def test_gone_pods_are_not_errors_and_forced_deletion_has_grace_zero() -> None:
    api, recorder = clients({"DELETE pods": 404})
    kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")], force_delete_pods=[("lm-1", "b")]))
    assert recorder.calls == [
        "PUT paxjobs/status",  # the fence: deletions only on a current view
        "DELETE pods",
        "DELETE pods",
    ]
    graceful, forced = recorder.bodies[1:]
    assert "gracePeriodSeconds" not in graceful and forced["gracePeriodSeconds"] == 0
    assert (graceful["preconditions"]["uid"], forced["preconditions"]["uid"]) == ("a", "b")


def test_deletions_on_a_stale_view_are_fenced_off() -> None:
    api, recorder = clients({"PUT paxjobs/status": 409})
    with pytest.raises(kube.Conflict):
        kube.apply_plan(api, JOB, Plan(delete_pods=[("lm-0", "a")]))
    assert recorder.calls == ["PUT paxjobs/status"]


def test_other_api_errors_propagate() -> None:
    api, _ = clients({"POST pods": 403})
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
        "POST events",
        "PATCH events",
        "PATCH events",
        "POST events",
    ]
    assert [body["count"] for body in recorder.bodies[1:3]] == [2, 3]


def test_an_expired_aggregated_event_is_posted_again_and_failures_only_log() -> None:
    api, recorder = clients({"PATCH events": 404})
    events = EventRecorder(api)
    events.post(JOB, Event("Warning", "R", "m"), NOW)
    events.post(JOB, Event("Warning", "R", "m"), NOW)
    assert recorder.calls == ["POST events", "PATCH events", "POST events"]
    broken, _ = clients({"POST events": 403})
    EventRecorder(broken).post(JOB, Event("Normal", "R", "m"), NOW)  # logged, not raised


def test_a_restart_loop_posts_a_bounded_number_of_events() -> None:
    """Each restart's events differ only by their counters ("attempt 7", "preemption 7/1000"): a job
    restarting for ever (a large budget, backoff 0) posted three new Events per restart. As client-go's
    aggregator does, past 10 distinct messages of one reason on one job within 10 minutes they become one
    Event ("combined from similar events", the latest message) whose count rises."""
    api, recorder = clients()
    events = EventRecorder(api)
    for attempt in range(1, 101):
        events.post(JOB, Event("Normal", "GangCreated", f"created 2 pods (attempt {attempt})"), NOW)
    assert recorder.calls.count("POST events") == 11  # 10 distinct, then the combined one
    assert recorder.calls.count("PATCH events") == 89
    last = recorder.bodies[-1]
    assert last["count"] == 90 and last["message"].endswith("(attempt 100)")
    assert last["message"].startswith("(combined from similar events): ")
    events.post(JOB, Event("Normal", "Running", "all 2 hosts running (attempt 100)"), NOW)
    assert recorder.calls[-1] == "POST events"  # another reason is counted on its own
    later = NOW + timedelta(minutes=11)  # a quiet window: messages are themselves again
    events.post(JOB, Event("Normal", "GangCreated", "created 2 pods (attempt 101)"), later)
    assert recorder.bodies[-1]["message"] == "created 2 pods (attempt 101)"


def test_token_bucket_allows_a_burst_then_paces_at_qps() -> None:
    now = [0.0]
    bucket = kube.TokenBucket(qps=10, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # reservations queue up
    now[0] = 10.0
    assert bucket.reserve() == 0.0  # refilled (up to the burst)
    assert kube.TokenBucket(qps=0, burst=1).reserve() == 0.0  # unlimited


class HeldExecutor:
    """Holds submitted work until `run_all` (an executor whose threads are all busy)."""

    def __init__(self) -> None:
        self.held: list[Any] = []

    def submit(self, fn: Any, *args: Any) -> None:
        self.held.append((fn, args))

    def run_all(self) -> None:
        for fn, args in self.held:
            fn(*args)
        self.held.clear()


def test_events_post_off_the_reconcile_path_and_a_full_backlog_drops() -> None:
    api, recorder = clients()
    executor = HeldExecutor()
    events = EventRecorder(api, executor=executor, max_pending=2)  # type: ignore[arg-type]
    for reason in ("A", "B", "C"):
        events.post(JOB, Event("Normal", reason, "m"), NOW)
    assert recorder.calls == [] and len(executor.held) == 2  # not posted yet; the third dropped
    executor.run_all()
    assert recorder.calls == ["POST events", "POST events"]
    events.post(JOB, Event("Normal", "D", "m"), NOW)  # the backlog drained: room again
    executor.run_all()
    assert [body["reason"] for body in recorder.bodies] == ["A", "B", "D"]


def test_an_owned_object_that_differs_from_the_rendered_one_is_brought_up_to_date() -> None:
    """A suspended job's TensorBoard may be enabled, moved or disabled before it resumes: the NetworkPolicy
    and Service it already owns are patched to the new ports (an up-to-date one is left alone)."""
    api, recorder = clients({"POST networkpolicies": 409, "POST services": 409})
    owned = {"ownerReferences": [{"uid": "u", "controller": True}]}
    old_ingress = [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 6006}]}]
    new_ingress = [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 7007}]}]
    service_spec = {"clusterIP": "None", "ports": [{"name": "metrics", "port": 9431}]}
    recorder.answers["GET networkpolicies"] = {"metadata": owned, "spec": {"ingress": old_ingress}}
    recorder.answers["GET services"] = {"metadata": owned, "spec": {**service_spec, "clusterIPs": ["None"]}}
    policy = {
        "kind": "NetworkPolicy",
        "metadata": {"name": "lm", "namespace": "ns"},
        "spec": {"ingress": new_ingress},
    }
    service = {"kind": "Service", "metadata": {"name": "lm", "namespace": "ns"}, "spec": service_spec}
    kube.ensure_owned(api, [service, policy], "u")
    assert sorted(recorder.calls) == [
        "GET networkpolicies",
        "GET services",
        "PATCH networkpolicies",
        "POST networkpolicies",
        "POST services",
    ]
    assert recorder.bodies[recorder.calls.index("PATCH networkpolicies")] == {
        "spec": {"ingress": new_ingress}
    }
