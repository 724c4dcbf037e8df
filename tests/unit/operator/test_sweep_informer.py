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
from pax_operator.sweep.trials import EXPECTATIONS_TIMEOUT_SECONDS, TrialCache, Unsettled
from pax_operator.workqueue import WorkQueue
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
        # the informer's callback: the operator's is handlers.trial_changed (wired by tests that need it)
        self.on_event: Callable[[str, str, dict[str, Any]], object] = lambda kind, _, body: (
            self.trials.observe(kind, body)
        )
        self.jobs = _informer(lambda kind, namespace, body: self.on_event(kind, namespace, body))
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
    monkeypatch.setattr(sweep_handlers.Clients, "connect", staticmethod(lambda **_: FakeApi().clients()))
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


def _woken(world: World) -> WorkQueue[tuple[str, str]]:
    """The sweeps' real work queue (not started; on the world's clock), woken by the operator's callback."""
    queue: WorkQueue[tuple[str, str]] = WorkQueue(lambda key: None, workers=1, clock=lambda: world.now)
    memo = kopf.Memo(sweep_queue=queue, sweep_trials=world.trials, sweep_reconciler=world.reconciler)
    world.on_event = lambda kind, namespace, body: sweep_handlers.trial_changed(memo, kind, namespace, body)
    return queue


def test_the_event_that_shows_the_last_awaited_write_queues_the_waiting_sweep_at_once() -> None:
    """A pass waiting for its own writes was looked at again every 0.1 s (a GET of the PaxSweep each time, up
    to 100 a wait). Now the event that shows the last of them queues the sweep with no delay; one that shows
    only some of them is an ordinary trial change (debounced), and the poll is only a safety net."""
    world = World(maxTrials=6, parallelTrials=2)
    queue = _woken(world)
    world.reconcile()
    first, second = (_stored(b, 10**6 + i) for i, b in enumerate(world.created()))
    assert world.reconcile() == EXPECTATIONS_POLL_SECONDS >= 1.0  # waits: a safety net, not a 0.1 s poll
    world.watch_delivers([first])  # one of the two writes shown: not yet
    assert queue.depth() == 0
    delay = queue.due_in(("ns", "sw"))
    assert delay is not None and delay >= world.reconciler.trial_change_delay(("ns", "sw")) > 0
    world.watch_delivers([second])  # the last one: the sweep is ready now, its debounced look dropped
    assert queue.depth() == 1 and queue.due_in(("ns", "sw")) is None
    assert world.reconcile() != EXPECTATIONS_POLL_SECONDS  # it reads both trials: no slot free
    assert world.created() == []


def test_writes_shown_while_no_pass_waits_keep_the_debounce() -> None:
    """A pass that wrote trials is not waiting yet: the echoes of its writes are ordinary trial changes (an
    immediate pass for each batch of writes would undo the debounce of progress scrapes)."""
    world = World(maxTrials=6, parallelTrials=2)
    queue = _woken(world)
    world.reconcile()
    world.watch_delivers([_stored(b, 10**6 + i) for i, b in enumerate(world.created())])
    assert queue.depth() == 0 and queue.due_in(("ns", "sw")) is not None


def test_a_deletion_that_ends_the_last_awaited_write_queues_the_sweep_at_once() -> None:
    world = World(maxTrials=6, parallelTrials=2)
    queue = _woken(world)
    world.reconcile()
    first, second = (_stored(b, 10**6 + i) for i, b in enumerate(world.created()))
    world.watch_delivers([first, _stored(second, 50)])  # second: a copy older than the pass's write
    assert world.reconcile() == EXPECTATIONS_POLL_SECONDS
    world.watch_delivers([second], kind="DELETED")  # deleted before the watch showed that write
    assert queue.depth() == 1


def _trial(name: str, version: int) -> dict[str, Any]:
    owner = {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "name": "sw",
        "uid": "uid-1",
        "controller": True,
    }
    metadata = {"name": name, "namespace": "ns", "uid": f"t-{name}", "resourceVersion": str(version)}
    return {"metadata": {**metadata, "labels": {"pax.dev/sweep-name": "sw"}, "ownerReferences": [owner]}}


def test_a_write_the_watch_showed_before_its_answer_does_not_hold_the_wake_up() -> None:
    """The watch may deliver a write before the worker registers what it wrote: that write is met already,
    and the event of the other one is still the last."""
    world = World()
    queue = _woken(world)
    shown, late = (_trial(name, version) for name, version in [("sw-0", 7), ("sw-1", 8)])
    world.watch_delivers([shown])
    world.trials.expect("uid-1", "ns", [("sw-0", shown), ("sw-1", late)])
    assert world.trials.read("ns", "sw", "uid-1") is Unsettled.WAIT
    world.watch_delivers([late])
    assert queue.depth() == 1


def test_a_watch_that_never_shows_the_writes_costs_a_few_looks_then_one_list() -> None:
    """The safety net's looks: EXPECTATIONS_POLL_SECONDS apart, the fallback LIST still comes at
    EXPECTATIONS_TIMEOUT_SECONDS: five GETs of the PaxSweep for the wait (100 at a 0.1 s poll)."""
    world = World(maxTrials=6, parallelTrials=2)
    world.reconcile()
    world.api.answers["LIST paxjobs"] = {
        "items": [_stored(b, 10**6 + i) for i, b in enumerate(world.created())]
    }
    gets = 0
    while True:
        delay = world.reconcile()
        gets += world.api.calls.count("GET paxsweeps")
        if "LIST paxjobs" in world.api.calls:
            break
        assert delay == EXPECTATIONS_POLL_SECONDS and gets < 100
        world.now += delay
    assert gets == round(EXPECTATIONS_TIMEOUT_SECONDS / EXPECTATIONS_POLL_SECONDS) + 1 == 5
    assert world.created() == []  # the LIST showed both trials: no slot was free
