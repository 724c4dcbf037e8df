"""The informers (as the operator wires them for gang pods): what the index holds, whom a change wakes, and
the list → watch → relist cycle (driven by a fake apiserver in the watch thread)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Iterator
from typing import Any

from kubernetes.client.exceptions import ApiException
from pax_operator import handlers
from pax_operator.adapters.cache import Cache, controller_key
from pax_operator.adapters.informer import Informer
from pax_operator.adapters.kube import PODS
from pax_operator.core.observe import PodView, pod_view
from pax_operator.workqueue import WorkQueue
from paxjob_factory import make_pod

SELECTOR = "pax.dev/job-name"


def pod(host: int, *, namespace: str = "ns", job: str = "lm", owner: str | None = "uid-1") -> dict[str, Any]:
    body = make_pod(host, job=job)
    body["metadata"]["namespace"] = namespace
    body["metadata"]["resourceVersion"] = str(10 + host)
    if owner:
        body["metadata"]["ownerReferences"] = [{"uid": owner, "controller": True}, {"uid": "x"}]
    return body


class FakeApiserver:
    """Pages of a LIST and scripted watch streams, recording the queries; a script entry "STOP" (or the end
    of the scripts) stops the informer, as the operator's cleanup does, once `scopes` lists were made."""

    def __init__(
        self, pages: list[list[dict[str, Any]]], streams: list[list[Any]], fail_first: Exception | None = None
    ) -> None:
        self.pages, self.streams, self.fail_first = pages, streams, fail_first
        self.scopes = 1
        self.lists: list[tuple[str, dict[str, str]]] = []
        self.watches: list[tuple[str, dict[str, str]]] = []
        self.informer: Informer[PodView] | None = None
        self.done = threading.Event()

    def list(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        self.lists.append((path, query))
        page = int(query.get("continue", "0"))
        more = {"continue": str(page + 1)} if page + 1 < len(self.pages) else {}
        return {"metadata": {"resourceVersion": f"list-{len(self.lists)}", **more}, "items": self.pages[page]}

    def watch(self, path: str, query: dict[str, str], read_timeout: float) -> Iterator[dict[str, Any]]:
        self.watches.append((path, query))
        assert read_timeout > int(query["timeoutSeconds"])  # the client outwaits the server
        if self.fail_first is not None and len(self.watches) == 1:
            raise self.fail_first
        script = self.streams.pop(0) if self.streams else ["STOP"]
        for event in script:
            if event == "STOP":
                assert self.informer is not None
                deadline = time.monotonic() + 5
                while len(self.lists) < self.scopes and time.monotonic() < deadline:
                    time.sleep(0.01)  # until every scope's watch thread has listed
                self.informer.stop()
                self.done.set()
                return
            yield copy.deepcopy(event)


def informer(
    api: FakeApiserver,
    woken: list[tuple[str, str]],
    namespaces: tuple[str, ...] = (),
) -> Informer[PodView]:
    made = Informer(
        api.list,
        api.watch,
        collection=PODS.collection,
        parse=pod_view,
        keys=handlers.pod_keys,
        on_event=lambda kind, namespace, pod: woken.append((namespace, pod.job_name)),
        selector=SELECTOR,
        namespaces=namespaces,
    )
    api.informer = made
    return made


def test_pods_are_indexed_by_controller_uid_and_by_job_name_label() -> None:
    woken: list[tuple[str, str]] = []
    pods = informer(FakeApiserver([], []), woken)
    other = pod_view(pod(0, job="other", owner=None))
    pods.apply(None, [("ADDED", ("ns", "lm-1"), pod_view(pod(1))), ("ADDED", ("ns", "other-0"), other)])
    assert set(pods) == {controller_key("ns", "uid-1"), ("ns", "lm"), ("ns", "other")}
    (view,) = pods[controller_key("ns", "uid-1")]
    assert (view.name, view.host, view.controller_uid, view.job_name) == ("lm-1", 1, "uid-1", "lm")
    assert [p.name for p in pods[("ns", "other")]] == ["other-0"]  # nobody controls it: by name only
    assert sorted(woken) == [("ns", "lm"), ("ns", "other")]


def test_a_pod_of_another_namespace_naming_the_jobs_uid_is_not_one_of_its_hosts() -> None:
    """Anyone who can read a PaxJob knows its UID and may write it into an ownerReference of a pod in their
    own namespace: that pod must not be taken for a host (it could fail the job, or, kept terminating by a
    finalizer, block its restart forever)."""
    pods = informer(FakeApiserver([], []), [])
    forged = pod_view(pod(0, namespace="attacker", job="lm", owner="uid-1"))
    real = pod_view(pod(1, namespace="ns", job="lm", owner="uid-1"))
    pods.apply(None, [("ADDED", ("attacker", "lm-0"), forged), ("ADDED", ("ns", "lm-1"), real)])
    cache = Cache(jobs={}, pods=pods)
    assert [p.name for p in cache.owned_pods("ns", "uid-1")] == ["lm-1"]
    assert cache.foreign_pods("ns", "lm", "uid-1") == []


def test_a_change_moves_the_pod_between_keys_and_a_delete_wakes_its_job() -> None:
    woken: list[tuple[str, str]] = []
    pods = informer(FakeApiserver([], []), woken)
    pods.apply(None, [("ADDED", ("ns", "lm-0"), pod_view(pod(0)))])
    pods.apply(None, [("MODIFIED", ("ns", "lm-0"), pod_view(pod(0, owner="uid-2")))])  # a new controller
    assert controller_key("ns", "uid-1") not in pods
    assert [p.controller_uid for p in pods[("ns", "lm")]] == ["uid-2"]
    woken.clear()
    pods.apply(None, [("DELETED", ("ns", "lm-0"), pod_view(pod(0)))])
    assert len(pods) == 0 and woken == [("ns", "lm")]


def test_a_listing_replaces_only_its_own_scope() -> None:
    woken: list[tuple[str, str]] = []
    pods = informer(FakeApiserver([], []), woken, namespaces=("a", "b"))
    pods.apply("a", [("ADDED", ("a", "lm-0"), pod_view(pod(0, namespace="a")))], listing=True)
    assert not pods.synced.is_set()  # b has not listed yet
    pods.apply("b", [("ADDED", ("b", "lm-0"), pod_view(pod(0, namespace="b", owner="uid-b")))], listing=True)
    assert pods.synced.is_set()
    woken.clear()
    pods.apply("a", [], listing=True)  # a relist of a: its pod is gone
    assert set(pods) == {controller_key("b", "uid-b"), ("b", "lm")} and woken == [("a", "lm")]


def test_list_pages_then_watch_from_the_listed_version_then_relist_on_410() -> None:
    modified = pod(0)
    modified["metadata"]["resourceVersion"] = "31"
    modified["metadata"]["labels"]["pax.dev/restart-attempt"] = "1"
    api = FakeApiserver(
        pages=[[pod(0)], [pod(1)]],
        streams=[
            [
                {"type": "MODIFIED", "object": modified},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "40"}}},
            ],  # the server ends the stream: watch again from the bookmark
            [
                {"type": "DELETED", "object": pod(1)},
                {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}},
            ],
        ],
    )
    woken: list[tuple[str, str]] = []

    async def scenario() -> Informer[PodView]:
        pods = informer(api, woken, namespaces=("ns",))
        pods.start(asyncio.get_running_loop())
        await asyncio.wait_for(pods.synced.wait(), 5)
        assert sorted(p.name for p in pods[controller_key("ns", "uid-1")]) == ["lm-0", "lm-1"]  # both pages
        await asyncio.to_thread(api.done.wait, 5)
        await asyncio.sleep(0.05)  # the last hand-over runs on the loop
        return pods

    pods = asyncio.run(scenario())
    # paged, and listed again after the 410
    assert [query.get("continue") for _, query in api.lists] == [None, "1", None, "1"]
    assert [query["resourceVersion"] for _, query in api.watches] == ["list-2", "40", "list-4"]
    assert all(path == "/api/v1/namespaces/ns/pods" for path, _ in api.lists + api.watches)
    assert all(query["labelSelector"] == SELECTOR for _, query in api.lists + api.watches)
    assert all(query["allowWatchBookmarks"] == "true" for _, query in api.watches)
    relisted = [(p.name, p.attempt) for p in pods[controller_key("ns", "uid-1")]]
    assert relisted == [("lm-0", 0), ("lm-1", 0)]  # the relist's truth
    assert set(woken) == {("ns", "lm")}


def test_each_namespace_is_listed_and_watched_and_no_namespaces_means_the_cluster() -> None:
    for namespaces, paths in [
        (("a", "b"), {"/api/v1/namespaces/a/pods", "/api/v1/namespaces/b/pods"}),
        ((), {"/api/v1/pods"}),
    ]:
        api = FakeApiserver([[]], [])
        api.scopes = len(paths)

        async def scenario(api: FakeApiserver = api, namespaces: tuple[str, ...] = namespaces) -> None:
            pods = informer(api, [], namespaces=namespaces)
            pods.start(asyncio.get_running_loop())
            await asyncio.wait_for(pods.synced.wait(), 5)
            await asyncio.to_thread(api.done.wait, 5)

        asyncio.run(scenario())
        assert {path for path, _ in api.lists} == paths


def run_until_stopped(api: FakeApiserver) -> None:
    async def scenario() -> None:
        informer(api, []).start(asyncio.get_running_loop())
        await asyncio.to_thread(api.done.wait, 5)

    asyncio.run(scenario())


def test_a_watch_refused_with_410_lists_again() -> None:
    api = FakeApiserver([[pod(0)]], [], fail_first=ApiException(status=410, reason="Gone"))
    run_until_stopped(api)
    assert [query["resourceVersion"] for _, query in api.watches] == ["list-1", "list-2"]


class ExpiringApiserver(FakeApiserver):
    """Two pages; the first `expire` continue tokens are answered 410 (compacted while the LIST paged)."""

    def __init__(self, expire: int) -> None:
        super().__init__([[pod(0)], [pod(1)]], [])
        self.expire = expire

    def list(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        if "continue" in query and self.expire:
            self.expire -= 1
            self.lists.append((path, query))
            raise ApiException(status=410, reason="Expired")
        return super().list(path, query)


class RecordedWaits(threading.Event):
    """The informer's stop event, recording its backoff waits instead of sleeping them."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.waits.append(timeout)
        return self.is_set()


def test_a_list_whose_continue_token_keeps_expiring_backs_off() -> None:
    """A scope that takes longer to LIST than etcd keeps versions must not LIST everything in a loop."""
    api = ExpiringApiserver(expire=5)
    stop = RecordedWaits()

    async def scenario() -> None:
        pods = informer(api, [])
        pods._stop = stop
        pods.start(asyncio.get_running_loop())
        await asyncio.wait_for(pods.synced.wait(), 5)
        await asyncio.to_thread(api.done.wait, 5)

    asyncio.run(scenario())
    assert [query.get("continue") for _, query in api.lists] == [None, "1"] * 6
    assert stop.waits == [0.5, 1.0, 2.0, 4.0]  # the first relist at once, then the backoff, growing
    assert [query["resourceVersion"] for _, query in api.watches] == ["list-12"]


def test_a_410_after_a_watch_ran_relists_at_once_again() -> None:
    """A watch that ran between two 410s resets the count: each relist is the first."""
    gone = {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}
    api = FakeApiserver([[pod(0)]], [[gone], [gone], [gone]])
    stop = RecordedWaits()

    async def scenario() -> None:
        pods = informer(api, [])
        pods._stop = stop
        pods.start(asyncio.get_running_loop())
        await asyncio.to_thread(api.done.wait, 5)

    asyncio.run(scenario())
    assert len(api.lists) == 4 and stop.waits == []


def test_a_failed_watch_is_retried_not_fatal() -> None:
    api = FakeApiserver([[pod(0)]], [], fail_first=ConnectionError("apiserver restarting"))
    run_until_stopped(api)
    # the same version again, no relist
    assert [query["resourceVersion"] for _, query in api.watches] == ["list-1", "list-1"]
    assert len(api.lists) == 1


def test_the_work_queue_takes_no_key_before_the_pods_are_listed() -> None:
    calls: list[str] = []

    async def reconcile(key: str) -> float | None:
        calls.append(key)
        return None

    async def scenario() -> None:
        synced = asyncio.Event()
        queue: WorkQueue[str] = WorkQueue(reconcile, workers=2, ready=(synced,))
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.05)
        assert calls == [] and queue.depth() == 1
        synced.set()
        await asyncio.sleep(0.05)
        assert calls == ["a"]
        await queue.stop()

    asyncio.run(scenario())
