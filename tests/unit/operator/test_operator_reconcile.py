"""The reconcile pass against fake API clients and a dict-fed cache: reads come from the cache, the apiserver
is read only to recover, and every error path leaves the PaxJob saying what happened."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pytest
from fake_api import FakeApi
from kubernetes.client.exceptions import ApiException
from pax_operator import reconcile as reconcile_module
from pax_operator.adapters.cache import Cache, controller_key
from pax_operator.adapters.events import EventRecorder
from pax_operator.adapters.scrape import Scraper
from pax_operator.core.observe import PodView, pod_view
from pax_operator.reconcile import Reconciler
from paxjob_factory import NOW, SPEC, make_pod


def job_body(
    status: dict[str, Any] | None = None, rv: str = "10", spec: dict | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxJob",
        "metadata": {"name": "lm", "namespace": "ns", "uid": "uid-1", "resourceVersion": rv, "generation": 1},
        "spec": spec or SPEC,
        "status": status or {},
    }


class Index(dict):
    """A kopf Index stand-in: key → list of values."""

    def put(self, key: Any, value: Any) -> None:
        self.setdefault(key, []).append(value)


def cache_with(job: dict[str, Any] | None, pods: Iterable[dict[str, Any]] = ()) -> Cache:
    jobs, by_owner = Index(), Index()
    if job is not None:
        jobs.put(("ns", "lm"), job)
    for pod in pods:
        pod["metadata"]["ownerReferences"] = [{"uid": "uid-1", "controller": True}]
        view = pod_view(pod)
        by_owner.put(controller_key("ns", "uid-1"), view)
        by_owner.put(("ns", "lm"), view)
    return Cache(jobs=jobs, pods=by_owner, clock=lambda: 0.0)


def reconciler(cache: Cache, api: FakeApi) -> Reconciler:
    clients = api.clients()
    scraper: Scraper[tuple[str, str]] = Scraper(on_change=lambda key: None)
    return Reconciler(
        clients, cache, scraper, EventRecorder(clients), operator_namespace="pax-system", clock=lambda: NOW
    )


def run(r: Reconciler) -> float | None:
    async def once() -> float | None:
        return await r.reconcile("ns", "lm")

    return asyncio.run(once())


def test_a_new_job_is_created_from_the_cache_without_reading_the_apiserver() -> None:
    api = FakeApi()
    cache = cache_with(job_body())
    r = reconciler(cache, api)
    assert run(r) == pytest.approx(1.0)
    assert not [call for call in api.calls if call.startswith(("GET", "LIST"))]
    assert api.calls.count("POST pods") == 2
    assert sorted(api.calls[:2]) == ["POST networkpolicies", "POST services"]  # side by side, before pods
    assert cache.job(("ns", "lm"))["status"]["gangCreated"] is True  # our write, before the watch shows it
    # The watch has not shown the new pods yet: wait for it rather than take them for deleted.
    api.calls.clear()
    assert run(r) == reconcile_module.EXPECTATIONS_RETRY_SECONDS and api.calls == []


def test_unmet_expectations_fall_back_to_listing_the_pods() -> None:
    api = FakeApi()
    cache = cache_with(job_body())
    r = reconciler(cache, api)
    run(r)
    cache.clock = lambda: 60.0  # the watch never delivered them
    pods = [make_pod(0, phase="Pending"), make_pod(1, phase="Pending")]
    for pod in pods:
        pod["metadata"]["ownerReferences"] = [{"uid": "uid-1", "controller": True}]
    api.answers["LIST pods"] = {"items": pods}
    api.calls.clear()
    run(r)
    assert api.calls[0] == "LIST pods"
    assert "POST pods" not in api.calls and "PUT paxjobs/status" not in api.calls


def test_a_conflicting_write_rereads_the_job_and_retries_soon() -> None:
    api = FakeApi()
    api.fail["PUT paxjobs/status"] = 409
    fresh = job_body(rv="50")
    api.answers["GET paxjobs"] = fresh
    cache = cache_with(job_body())
    assert run(reconciler(cache, api)) == reconcile_module.CONFLICT_RETRY_SECONDS
    assert api.calls[-1] == "GET paxjobs"
    assert cache.job(("ns", "lm"))["metadata"]["resourceVersion"] == "50"


def test_pods_refused_by_admission_leave_a_warning_and_created_false(caplog) -> None:
    api = FakeApi()
    api.fail["POST pods"] = 403
    cache = cache_with(job_body())
    with caplog.at_level("INFO", logger="pax_operator"), pytest.raises(ApiException):  # queue backs off
        run(reconciler(cache, api))
    assert "GangCreated" not in caplog.text  # the log said so at every retry while nothing was created
    assert api.calls.count("POST events") == 1
    status = cache.job(("ns", "lm"))["status"]
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", "FailedCreatePod")
    assert status.get("gangCreated") is not True


def test_a_refused_status_write_is_reported_as_such_and_not_retried_in_the_pass() -> None:
    """The pods were created; the status subresource refused the write (422: a policy on paxjobs/status, a
    status the CRD rejects). It was reported as FailedCreatePod (pods refused) and written a second time in
    the same pass (refused again). One FailedApply Warning naming the status; the work queue backs off."""
    api = FakeApi()
    api.fail["PUT paxjobs/status"] = 422
    with pytest.raises(ApiException):
        run(reconciler(cache_with(job_body()), api))
    assert api.calls.count("POST pods") == 2 and api.calls.count("PUT paxjobs/status") == 1
    (event,) = [body for call, body in zip(api.calls, api.bodies, strict=True) if call == "POST events"]
    assert event["reason"] == "FailedApply" and event["message"].startswith("status: ")


def test_retried_refusals_aggregate_their_warning() -> None:
    api = FakeApi()
    api.fail["POST pods"] = 403
    r = reconciler(cache_with(job_body()), api)
    for _ in range(3):
        with pytest.raises(ApiException):
            run(r)
    assert api.calls.count("POST events") == 1 and api.calls.count("PATCH events") == 2


def test_a_pod_name_held_by_a_foreign_pod_is_reported_and_retried() -> None:
    api = FakeApi()
    api.fail["POST pods"] = [409, 0]
    api.answers["GET pods"] = {"metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}
    cache = cache_with(job_body())
    assert run(reconciler(cache, api)) == reconcile_module.NAMES_TAKEN_RETRY_SECONDS
    status = cache.job(("ns", "lm"))["status"]
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", "PodNameTaken")
    assert "not controlled by this PaxJob" in created["message"] and status.get("preemptions", 0) == 0


@pytest.mark.parametrize(("kind", "plural"), [("Service", "services"), ("NetworkPolicy", "networkpolicies")])
def test_a_service_or_policy_name_held_by_another_owner_blocks_the_gang(kind: str, plural: str) -> None:
    """A user's Service named like the job would leave the hosts' DNS names unresolved (every attempt then
    times out in jax.distributed): say so and create no pods until it is gone."""
    api = FakeApi()
    api.fail[f"POST {plural}"] = [409, 0]
    api.answers[f"GET {plural}"] = {"metadata": {"ownerReferences": [{"uid": "other", "controller": True}]}}
    cache = cache_with(job_body())
    assert run(reconciler(cache, api)) == reconcile_module.NAMES_TAKEN_RETRY_SECONDS
    assert "POST pods" not in api.calls
    status = cache.job(("ns", "lm"))["status"]
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"]) == ("False", f"{kind}NameTaken")
    assert f"{kind} lm exists and belongs to another owner" in created["message"]


def test_our_own_service_from_an_earlier_pass_is_reused() -> None:
    api = FakeApi()
    api.fail["POST services"] = [409, 0]
    api.answers["GET services"] = {"metadata": {"ownerReferences": [{"uid": "uid-1", "controller": True}]}}
    run(reconciler(cache_with(job_body()), api))
    assert api.calls.count("POST pods") == 2


def test_a_running_job_with_nothing_due_costs_no_request() -> None:
    api = FakeApi()
    status = {
        "phase": "Running",
        "hosts": 2,
        "gangCreated": True,
        "startTime": "2026-11-25T11:00:00Z",
        "progress": {"lastProgressTime": "2026-11-25T11:59:00Z"},
        "conditions": [
            {"type": "Created", "status": "True", "lastTransitionTime": "2026-11-25T11:00:00Z"},
            {"type": "Running", "status": "True", "lastTransitionTime": "2026-11-25T11:00:00Z"},
        ],
        "observedGeneration": 1,
    }
    r = reconciler(cache_with(job_body(status), [make_pod(0), make_pod(1)]), api)
    requeue = run(r)
    assert api.calls == [] and requeue is not None and requeue > 60  # the hang clock, not a poll


def test_finished_idle_jobs_are_never_looked_at_again() -> None:
    api = FakeApi()
    status = {
        "phase": "Succeeded",
        "hosts": 2,
        "completionTime": "2026-11-25T11:00:00Z",
        "observedGeneration": 1,
    }
    assert run(reconciler(cache_with(job_body(status)), api)) is None and api.calls == []


def test_a_deleted_or_unparsable_job_is_dropped() -> None:
    api = FakeApi()
    assert run(reconciler(cache_with(None), api)) is None
    bad = job_body(spec={"experiment": "x"})
    r = reconciler(cache_with(bad), api)
    assert run(r) is None and api.calls == ["POST events"]  # a Warning naming the field, once
    assert api.bodies[0]["reason"] == "SpecNotUnderstood" and "spec.image" in api.bodies[0]["message"]
    assert run(r) is None and api.calls == ["POST events"]


def test_own_status_write_echo_is_recognised() -> None:
    api = FakeApi()
    cache = cache_with(job_body())
    run(reconciler(cache, api))
    written = cache.job(("ns", "lm"))
    assert cache.is_own_write(written) and not cache.is_own_write(job_body(rv="10"))


def test_cache_prefers_the_newer_copy_and_forgets_a_replaced_object() -> None:
    cache = cache_with(job_body(rv="10"))
    cache.remember(job_body(rv="12"))
    assert cache.job(("ns", "lm"))["metadata"]["resourceVersion"] == "12"
    cache.jobs[("ns", "lm")] = [job_body(rv="13")]  # the watch caught up
    assert cache.job(("ns", "lm"))["metadata"]["resourceVersion"] == "13"
    replaced = job_body(rv="20")
    replaced["metadata"]["uid"] = "uid-2"
    cache.remember(job_body(rv="30"))
    cache.jobs[("ns", "lm")] = [replaced]  # deleted and recreated under the same name
    assert cache.job(("ns", "lm"))["metadata"]["uid"] == "uid-2"


def test_expectations_settle_when_the_watch_shows_our_changes() -> None:
    now = [0.0]
    cache = Cache(jobs={}, pods={}, clock=lambda: now[0], expectations_timeout=10)
    cache.expect("u", created=["a"], deleted=["b"])
    old = PodView(name="lm-0", uid="b", host=0, attempt=0, phase="Running", deleting=False)
    new = PodView(name="lm-0", uid="a", host=0, attempt=1, phase="Pending", deleting=False)
    assert cache.settled("u", [old]) is False
    assert cache.settled("u", [new, PodView(**{**old.__dict__, "deleting": True})]) is True
    cache.expect("u", created=["c"], deleted=[])
    now[0] = 11.0
    assert cache.settled("u", []) is None  # too long: read the apiserver


def test_a_job_deleted_while_the_watch_was_away_is_dropped_not_retried() -> None:
    api = FakeApi()
    api.fail["POST services"] = 404
    api.fail["GET paxjobs"] = 404
    assert run(reconciler(cache_with(job_body()), api)) is None
    # The owned objects are created side by side (both tried), then the PaxJob is found gone.
    assert sorted(api.calls[:2]) == ["POST networkpolicies", "POST services"] and api.calls[2:] == [
        "GET paxjobs"
    ]


def test_a_fenced_reconciler_decides_nothing_and_sends_nothing() -> None:
    """Leadership unconfirmed (a paused leader that woke up): no pass runs on what may be a stale view."""
    api = FakeApi()
    r = reconciler(cache_with(job_body()), api)
    r.clients.may_write = lambda: False
    assert run(r) == reconcile_module.NOT_LEADING_RETRY_SECONDS and api.calls == []
    r.clients.may_write = lambda: True
    run(r)
    assert api.calls.count("POST pods") == 2


def test_a_ttl_deletion_is_fenced_by_the_version_it_was_decided_on() -> None:
    """The cache may lag a ttlSecondsAfterFinished raised a moment ago (or a paused operator's, by much):
    the DELETE carries the resourceVersion read, so a changed PaxJob is read again, not deleted."""
    status = {"phase": "Failed", "hosts": 2, "completionTime": "2026-11-25T11:00:00Z"}
    status["observedGeneration"] = 1  # nothing else to write: the DELETE is fenced by the version read
    job = job_body(status, rv="42", spec={**SPEC, "ttlSecondsAfterFinished": 60})
    api = FakeApi()
    api.fail["DELETE paxjobs"] = [409]  # the precondition failed: the TTL was raised meanwhile
    api.answers["GET paxjobs"] = job_body(status, rv="43", spec={**SPEC, "ttlSecondsAfterFinished": 86400})
    cache = cache_with(job)
    r = reconciler(cache, api)
    assert run(r) == reconcile_module.CONFLICT_RETRY_SECONDS
    (options,) = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "DELETE paxjobs"]
    assert options["preconditions"] == {"uid": "uid-1", "resourceVersion": "42"}
    assert api.calls[-1] == "GET paxjobs"
    api.calls.clear()
    assert run(r) is not None and "DELETE paxjobs" not in api.calls  # the raised TTL is not due yet
