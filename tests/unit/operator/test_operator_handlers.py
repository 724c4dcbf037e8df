"""The kopf wiring's pure parts: what the indices (the cache) hold, and the disabled diff base."""

from __future__ import annotations

import asyncio

import kopf
from pax_operator import handlers
from paxjob_factory import make_pod


def test_pods_are_indexed_by_controller_uid_and_by_job_name_label() -> None:
    pod = make_pod(1, 2)
    pod["metadata"]["ownerReferences"] = [{"uid": "uid-1", "controller": True}, {"uid": "x"}]
    keys = asyncio.run(handlers.pod_index(body=kopf.Body(pod), namespace="ns"))
    assert set(keys) == {"uid-1", ("ns", "lm")}
    view = keys["uid-1"]
    assert (view.name, view.host, view.attempt, view.controller_uid, view.job_name) == (
        "lm-1",
        1,
        2,
        "uid-1",
        "lm",
    )


def test_a_labelled_pod_nobody_controls_is_indexed_by_name_only() -> None:
    keys = asyncio.run(handlers.pod_index(body=kopf.Body(make_pod(0)), namespace="ns"))
    assert list(keys) == [("ns", "lm")]


def test_paxjobs_are_indexed_by_namespace_and_name() -> None:
    body = {"metadata": {"name": "lm", "namespace": "ns", "uid": "u"}, "spec": {}}
    index = asyncio.run(handlers.paxjob_index(body=kopf.Body(body), namespace="ns", name="lm"))
    assert index == {("ns", "lm"): body}


def test_no_diff_base_is_built_or_stored() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "lm"}, "spec": {"big": list(range(1000))}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
