"""PaxSweep fairness and bounds: one large or slow sweep must not hold a sweep worker (two in all) or the
GP-bandit worker (one in all) long enough to stall the other sweeps. Each case is counted (calls, passes,
orderings), never timed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi
from pax_operator.sweep.decide import MAX_NEW_TRIALS_PER_PASS
from pax_operator.sweep.reconcile import SweepReconciler
from sweep_sim import sweep_spec


def _sweep_object(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "metadata": {"name": "sw", "namespace": "ns", "uid": "uid-1", "resourceVersion": "1"},
        "spec": sweep_spec(**spec),
    }


def _created(api: FakeApi) -> list[dict[str, Any]]:
    return [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "POST paxjobs"]


@pytest.mark.parametrize("algorithm", ["random", "regularizedEvolution"])
def test_a_thousand_parallel_trials_are_created_a_bounded_batch_per_pass(algorithm: str) -> None:
    """parallelTrials 1000 created all 1000 trial PaxJobs in one pass (1000 POSTs, the status written only
    after the last), holding one of the two sweep workers for all of it: every other sweep waited. A pass
    now creates at most MAX_NEW_TRIALS_PER_PASS and asks to run again at once, behind the waiting keys; the
    sweep still reaches 1000 running trials, with consecutive indices and the counts in step."""
    api = FakeApi()
    sweep = _sweep_object(maxTrials=10000, parallelTrials=1000, algorithm={"name": algorithm, "seed": 3})
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients())
    stored: list[dict[str, Any]] = []
    passes = 0
    while True:
        api.answers["GET paxsweeps"] = sweep
        api.calls.clear()
        api.bodies.clear()
        delay = reconciler.reconcile("ns", "sw")
        passes += 1
        bodies = _created(api)
        assert len(bodies) <= MAX_NEW_TRIALS_PER_PASS
        status = api.bodies[api.calls.index("PUT paxsweeps/status")]["status"]
        stored += bodies
        assert status["trials"]["created"] == len(stored) == status["trials"]["running"]
        sweep = {**sweep, "status": status}
        api.answers["LIST paxjobs"] = {"items": list(stored)}
        if len(stored) < 1000:
            assert delay == 0.0  # more to create: again at once, at the back of the queue
        else:
            assert delay is not None and delay > 1
            break
    assert passes == 1000 // MAX_NEW_TRIALS_PER_PASS
    assert [b["metadata"]["name"] for b in stored] == [f"sw-{i}" for i in range(1000)]
    assert reconciler.rebuilds == 1  # each pass went on from the previous one's algorithm
