"""PaxSweep passes read their trials from the operator's PaxJob informer (no LIST of a sweep's trials each
pass: 10 MB and 0.4 s of CPU a pass at 10,000 trials) and wait for the watch to show their own trial
writes before acting again: a view without a trial just created counts its slot as free."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf
import pytest
from fake_api import FakeApi
from pax_operator.adapters.informer import Informer
from pax_operator.handlers import paxjob_body, paxjob_keys
from pax_operator.sweep import handlers as sweep_handlers
from pax_operator.sweep.reconcile import EXPECTATIONS_POLL_SECONDS, SweepReconciler
from pax_operator.sweep.trials import EXPECTATIONS_TIMEOUT_SECONDS, TrialCache
from test_sweep_tampering import _sweep_object


def _informer(on_event: Callable[[str, str, dict[str, Any]], None]) -> Informer[dict[str, Any]]:
    """The operator's PaxJob informer (its parse and index keys), fed by the test instead of a watch."""
    return Informer(
        lambda path, query: {},
        lambda path, query, timeout: iter(()),
        collection=lambda scope: "/paxjobs",
        parse=paxjob_body,
        keys=paxjob_keys,
        on_event=on_event,
    )


class World:
    """The fake apiserver, a real PaxJob Informer fed by hand (the watch), and the sweep reconciler."""

    def __init__(self, **spec: Any) -> None:
        self.api = FakeApi()
        self.sweep = _sweep_object(**spec)
        self.now = 0.0
        self.deleted: list[dict[str, Any]] = []
        self.jobs = _informer(lambda kind, namespace, body: self.trials.observe(kind, body))
        self.trials = TrialCache(self.jobs, clock=lambda: self.now)
        self.reconciler = SweepReconciler(self.api.clients(), self.trials)
        self.jobs.apply(None, [], listing=True)
        self.trials.listed(self.sweep["metadata"]["uid"])  # past the first pass's LIST (tested on its own)

    def reconcile(self) -> float | None:
        """One pass; the status it wrote becomes the sweep's."""
        self.api.answers["GET paxsweeps"] = self.sweep
        self.api.calls.clear()
        self.api.bodies.clear()
        delay = self.reconciler.reconcile("ns", "sw")
        for call, body in zip(self.api.calls, self.api.bodies, strict=True):
            if call == "PUT paxsweeps/status":
                self.sweep = {**self.sweep, "status": body["status"]}
        return delay

    def created(self) -> list[dict[str, Any]]:
        return [b for c, b in zip(self.api.calls, self.api.bodies, strict=True) if c == "POST paxjobs"]

    def watch_delivers(self, bodies: list[dict[str, Any]], kind: str = "ADDED") -> None:
        self.jobs.apply("ns", [(kind, ("ns", b["metadata"]["name"]), paxjob_body(b)) for b in bodies])


def _stored(body: dict[str, Any], version: int) -> dict[str, Any]:
    return {**body, "metadata": {**body["metadata"], "uid": f"t-{version}", "resourceVersion": str(version)}}


def test_a_pass_reads_the_informer_and_lists_no_trial() -> None:
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    assert [b["metadata"]["name"] for b in world.created()] == ["sw-0", "sw-1"]
    assert "LIST paxjobs" not in world.api.calls
    world.watch_delivers([_stored(b, 200 + i) for i, b in enumerate(world.created())])
    world.reconcile()
    assert world.api.calls == ["GET paxsweeps"]  # both slots are taken: nothing to do, nothing listed


def test_trials_the_watch_has_not_shown_yet_are_waited_for_not_created_again() -> None:
    """Read from a watch that has not delivered them, the two trials just created left two free slots: the
    pass created two more (sw-2, sw-3: four running of parallelTrials 2) and counted them all."""
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    created = world.created()
    assert world.reconcile() == EXPECTATIONS_POLL_SECONDS
    assert world.api.calls == ["GET paxsweeps"]  # no trial created, no status written
    world.watch_delivers([_stored(created[0], 10**6)])  # one of two shown: still waiting
    assert world.reconcile() == EXPECTATIONS_POLL_SECONDS
    world.watch_delivers([_stored(created[1], 10**6 + 1)])
    world.reconcile()
    assert world.created() == [] and world.sweep["status"]["trials"]["created"] == 2


def test_a_watch_that_stays_behind_is_listed_once_then_read_again() -> None:
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    stored = [_stored(b, 10**6 + i) for i, b in enumerate(world.created())]
    world.now += EXPECTATIONS_TIMEOUT_SECONDS + 1
    world.api.answers["LIST paxjobs"] = {"items": stored}
    world.reconcile()
    assert world.api.calls.count("LIST paxjobs") == 1 and world.created() == []
    world.reconcile()  # the expectations are dropped: the informer again (it still lags: two free slots)
    assert "LIST paxjobs" not in world.api.calls


def test_a_trial_deleted_before_the_watch_showed_it_meets_its_expectation() -> None:
    """A deleted trial still counts (status.trials.created is a high-water mark): its slot gets the next
    index, never its own again."""
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    first, second = (_stored(b, 10**6 + i) for i, b in enumerate(world.created()))
    world.watch_delivers([first, second])
    world.watch_delivers([first], kind="DELETED")
    world.reconcile()
    assert [b["metadata"]["name"] for b in world.created()] == ["sw-2"]
    assert "LIST paxjobs" not in world.api.calls


def test_a_result_recorded_is_not_recorded_again_from_a_stale_view() -> None:
    """The watch had not delivered the result annotation written a pass before: that view showed the trial
    finished and unrecorded, and the pass recorded (and fed back) its result a second time."""
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    stored = [_stored(b, 10**6 + i) for i, b in enumerate(world.created())]
    stored[0]["status"] = {"phase": "Succeeded", "progress": {"step": 10, "metrics": {"eval_test/loss": 1.0}}}
    world.watch_delivers(stored)
    world.reconcile()
    results = [b for c, b in zip(world.api.calls, world.api.bodies, strict=True) if c == "PATCH paxjobs"]
    assert len(results) == 1 and len(world.created()) == 1
    assert world.reconcile() == EXPECTATIONS_POLL_SECONDS  # its PATCH and POST are not shown yet
    assert world.api.calls == ["GET paxsweeps"]


def test_a_trial_whose_owner_reference_was_removed_is_no_trial() -> None:
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    stored = [_stored(b, 10**6 + i) for i, b in enumerate(world.created())]
    world.watch_delivers(stored)
    orphan = {**stored[0], "metadata": {**stored[0]["metadata"], "ownerReferences": []}}
    world.watch_delivers([orphan], kind="MODIFIED")
    world.reconcile()
    assert [b["metadata"]["name"] for b in world.created()] == ["sw-2"]  # as a LIST would have shown it


class Queue:
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []

    def add(self, key: tuple[str, str], delay: float = 0.0) -> None:
        self.added.append(key)


def test_the_informer_wakes_a_trials_sweep_by_label_or_controller() -> None:
    world = World()
    memo = kopf.Memo(sweep_queue=Queue(), sweep_trials=world.trials, sweep_reconciler=world.reconciler)
    trial = {
        "metadata": {
            "name": "sw-0",
            "labels": {"pax.dev/sweep-name": "sw"},
            "ownerReferences": [{"kind": "PaxSweep", "name": "sw", "uid": "uid-1", "controller": True}],
        }
    }
    unlabelled = {"metadata": {**trial["metadata"], "labels": {}}}
    plain = {"metadata": {"name": "lm", "labels": {}}}
    for kind, body in [("MODIFIED", trial), ("DELETED", unlabelled), ("ADDED", plain)]:
        sweep_handlers.trial_changed(memo, kind, "ns", body)
    assert memo.sweep_queue.added == [("ns", "sw"), ("ns", "sw")]
    sweep_handlers.trial_changed(kopf.Memo(), "ADDED", "ns", trial)  # before the sweeps started: no-op


def test_no_sweep_pass_runs_before_the_paxjob_informer_has_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass before the informer's first listing would see a sweep without its trials (every slot free)."""
    passes: list[tuple[str, str]] = []
    monkeypatch.setattr(sweep_handlers.Clients, "connect", staticmethod(lambda: FakeApi().clients()))
    monkeypatch.setattr(SweepReconciler, "reconcile_key", lambda self, key: passes.append(key))

    async def main() -> None:
        memo = kopf.Memo(jobs=_informer(lambda kind, namespace, body: None))
        await sweep_handlers.start_sweeps(memo=memo)
        await asyncio.sleep(0)  # the leadership task starts the queue (no Leadership: at once)
        memo.sweep_queue.add(("ns", "sw"))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert passes == []
        memo.jobs.apply(None, [], listing=True)
        for _ in range(500):  # bounded: 5 s at most
            if passes:
                break
            await asyncio.sleep(0.01)
        assert passes == [("ns", "sw")]
        await sweep_handlers.stop_sweeps(memo=memo)

    asyncio.run(main())


def test_a_sweeps_first_pass_in_a_new_leader_lists_its_trials_once() -> None:
    """A new leader's informer may not show yet the trial its predecessor created just before it stopped
    (expectations live in memory): read from the informer, that trial's slot looked free and a third trial
    ran beside parallelTrials=2. The first pass of each sweep LISTs; the next ones read the informer."""
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    made = [_stored(b, 200 + i) for i, b in enumerate(world.created())]
    successor = World(maxTrials=6, parallelTrials=2)
    successor.trials = TrialCache(successor.jobs, clock=lambda: successor.now)  # a new process
    successor.reconciler = SweepReconciler(successor.api.clients(), successor.trials)
    successor.sweep = world.sweep
    successor.watch_delivers(made[:1])  # its watch has shown one of the two trials
    successor.api.answers["LIST paxjobs"] = {"items": made}
    successor.reconcile()
    assert "LIST paxjobs" in successor.api.calls
    assert successor.created() == []
    successor.watch_delivers(made[1:])
    successor.reconcile()
    assert "LIST paxjobs" not in successor.api.calls
    assert successor.created() == []
