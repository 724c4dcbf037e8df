"""The kopf wiring's pure parts: what the PaxJob index (the cache) holds, and the disabled diff base."""

from __future__ import annotations

import asyncio

import kopf
from pax_operator import handlers


def test_paxjobs_are_indexed_by_namespace_and_name() -> None:
    body = {"metadata": {"name": "lm", "namespace": "ns", "uid": "u"}, "spec": {}}
    index = asyncio.run(handlers.paxjob_index(body=kopf.Body(body), namespace="ns", name="lm"))
    assert index == {("ns", "lm"): body}


def test_no_diff_base_is_built_or_stored() -> None:
    storage = handlers.NoDiffBase()
    body = kopf.Body({"metadata": {"name": "lm"}, "spec": {"big": list(range(1000))}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
