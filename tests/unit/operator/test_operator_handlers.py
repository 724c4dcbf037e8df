"""The wiring's pure parts: how PaxJob events reach the queue (the echo of our own status write does not), the
index keys, and kopf's disabled diff base."""

from __future__ import annotations

from typing import Any

import kopf
from pax_operator import handlers
from pax_operator.adapters.cache import Cache


class Recorder:
    """Stands in for the work queue and the reconciler: records what they were asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def add(self, key: Any) -> None:
        self.calls.append(("add", key))

    def forget(self, key: Any, uid: str | None = None) -> None:
        self.calls.append(("forget", key, uid))


def job(rv: str) -> dict[str, Any]:
    return {"metadata": {"name": "lm", "namespace": "ns", "uid": "u", "resourceVersion": rv}, "spec": {}}


def memo() -> kopf.Memo:
    recorder = Recorder()
    return kopf.Memo(queue=recorder, reconciler=recorder, cache=Cache(jobs={}, pods={}))


def test_paxjobs_are_indexed_by_namespace_and_name() -> None:
    assert handlers.paxjob_keys("ns", job("1")) == [("ns", "lm")]


def test_a_paxjob_change_is_reconciled_but_the_echo_of_our_own_write_is_not() -> None:
    m = memo()
    handlers.paxjob_event(m, "ADDED", "ns", job("1"))
    m.cache.remember(job("2"))  # our status write's answer
    handlers.paxjob_event(m, "MODIFIED", "ns", job("2"))  # its echo
    handlers.paxjob_event(m, "MODIFIED", "ns", job("3"))  # someone else's change
    assert m.queue.calls == [("add", ("ns", "lm")), ("add", ("ns", "lm"))]


def test_a_deleted_paxjob_is_forgotten_by_the_queue_and_the_reconciler() -> None:
    m = memo()
    handlers.paxjob_event(m, "DELETED", "ns", job("4"))
    assert m.queue.calls == [("forget", ("ns", "lm"), None), ("forget", ("ns", "lm"), "u")]


def test_no_diff_base_is_built_or_stored() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "lm"}, "spec": {"big": list(range(1000))}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None


def test_the_cache_keeps_paxjobs_without_managed_fields_or_the_last_applied_copy() -> None:
    """Both can be as large as the object itself; only the status is ever written back from the cache, and
    the status endpoint leaves the stored metadata as it is."""
    body = job("7")
    body["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    body["metadata"]["annotations"] = {handlers.LAST_APPLIED: "{...}", "team": "a"}
    kept = handlers.paxjob_body(body)
    assert "managedFields" not in kept["metadata"] and kept["metadata"]["annotations"] == {"team": "a"}
    assert kept["metadata"]["resourceVersion"] == "7" and kept["spec"] == body["spec"]
    assert body["metadata"]["managedFields"]  # the informer's input is not changed
