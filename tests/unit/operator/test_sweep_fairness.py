"""PaxSweep fairness and bounds: one large or slow sweep must not hold a sweep worker (two in all) or the
GP-bandit worker (one in all) long enough to stall the other sweeps. Each case is counted (calls, passes,
orderings), never timed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi
from pax_operator.sweep.decide import MAX_NEW_TRIALS_PER_PASS
from pax_operator.sweep.reconcile import SweepReconciler
from sweep_sim import Sim, sweep_spec


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


def _thousand_trials_at_a_rank_rule() -> tuple[FakeApi, Sim]:
    """A sweep with 1000 running trials that all just reported eval_test/loss at step 100 (0..999), under a
    median-stopping rule there: the worse half is stopped in one pass."""
    spec = {
        "maxTrials": 10000,
        "parallelTrials": 1000,
        "algorithm": {"name": "random", "seed": 1},
        "earlyStopping": {"rules": [{"step": 100, "percentile": 50, "minTrials": 3}]},
    }
    sim = Sim(sweep_spec(**spec))
    while len(sim.running()) < 1000:
        sim.step()
    for n, job in enumerate(sim.running()):
        sim.set_status(
            job["metadata"]["name"], "Running", {"eval_test/loss": float(n)}, step=100, evalStep=100
        )
    api = FakeApi()
    api.answers["GET paxsweeps"] = {**_sweep_object(**spec), "status": sim.status.to_api()}
    api.answers["LIST paxjobs"] = {"items": list(sim.jobs.values())}
    return api, sim


def test_a_pass_that_stops_hundreds_of_trials_posts_one_event() -> None:
    """A rank rule stopping 500 trials in one pass posted 500 TrialEarlyStopped Events, one synchronous POST
    each while the sweep worker waited (and 500 Event objects in etcd). It is now one Event per pass that
    counts and names them (each trial's reason stays in its pax.dev/sweep-stop annotation)."""
    api, _ = _thousand_trials_at_a_rank_rule()
    SweepReconciler(api.clients()).reconcile("ns", "sw")
    stopped = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "PATCH paxjobs" and "spec" in b]
    assert len(stopped) == 500
    events = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "POST events"]
    assert [e["reason"] for e in events] == ["TrialEarlyStopped"]
    assert events[0]["message"].startswith("500 trials: sw-500: eval_test/loss=500 at step 100")
    assert len(events[0]["message"]) <= 1024


def test_a_stopped_trials_measurement_goes_in_its_stop_patch() -> None:
    """A trial stopped in the pass that recorded its measurement got two PATCHes (the measurement, then the
    stop): 1500 writes for 1000 measured trials of which 500 stopped. The stop now carries the measurement:
    one write per trial, and the stopped trial's record holds the step it was judged at."""
    api, _ = _thousand_trials_at_a_rank_rule()
    SweepReconciler(api.clients()).reconcile("ns", "sw")
    patches = [
        (p, b) for c, p, b in zip(api.calls, api.paths, api.bodies, strict=True) if c == "PATCH paxjobs"
    ]
    assert len(patches) == 1000
    assert len({p for p, _ in patches}) == 1000  # one per trial
    stops = [b for _, b in patches if "spec" in b]
    assert len(stops) == 500
    for body in stops:
        annotations = body["metadata"]["annotations"]
        assert "pax.dev/sweep-stop" in annotations
        assert json.loads(annotations["pax.dev/sweep-measurements"])["recent"][-1][0] == 100


def test_a_done_suggestion_wakes_its_sweep_and_the_next_in_the_queue() -> None:
    """GP-bandit sweeps waiting for a suggestion ran a full reconcile pass (GET, LIST of every trial, decide)
    every second: 8 sweeps of 500 trials queued behind 15 s suggestions kept both sweep workers busy with
    passes that only asked 'done yet?'. The worker now tells the sweep whose suggestion is done, and the next
    in the queue (its poll starts its job), so a waiting sweep needs no polling."""
    from pax_operator.sweep.vizier import Suggester
    from sweep_stub_suggest import slow_suggestion

    told: list[str] = []
    suggester = Suggester(deadline=600.0, function=slow_suggestion, on_done=told.append)
    try:
        assert suggester.poll("A", (0, 0, 1), (0.2, "A")) is None  # the worker takes it
        assert suggester.poll("B", (0, 0, 1), (0.2, "B")) is None  # queued behind it
        _wait(lambda: "A" in told)  # no poll in between: the worker said so
        assert told == ["A", "B"]
        assert suggester.poll("A", (0, 0, 1), (0.2, "A")) == [{"tag": "A"}]  # and B's job starts
        _wait(lambda: told.count("B") == 2)
        assert suggester.poll("B", (0, 0, 1), (0.2, "B")) == [{"tag": "B"}]
        assert told == ["A", "B", "B"]
    finally:
        suggester.close()


def _wait(condition: Any, seconds: float = 60.0) -> None:
    """Bounded wait (the worker process spawns and imports first)."""
    import time

    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "not told in time"
        time.sleep(0.02)


def test_a_sweep_waiting_for_its_suggestion_is_not_reconciled_every_second() -> None:
    """While its suggestion is computed (or queued), the sweep's next pass is a safety net only: the worker
    wakes it (above); it was every second, a pass listing every trial each time."""

    class Waiting:
        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> None:
            return None

        def forget(self, uid: str) -> None:
            return None

    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object(algorithm={"name": "gpBandit"})
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients(), suggester=Waiting())  # type: ignore[arg-type]
    delay = reconciler.reconcile("ns", "sw")
    assert "POST paxjobs" not in api.calls
    assert delay is not None and 60 / delay <= 6  # passes a minute while it waits (was 60)
    assert reconciler.key_of("uid-1") == ("ns", "sw") and reconciler.key_of("other") is None


def test_the_waker_queues_the_sweep_from_the_workers_thread() -> None:
    import asyncio
    import threading

    from pax_operator.sweep.handlers import suggestion_waker
    from pax_operator.workqueue import WorkQueue

    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients())
    reconciler.reconcile("ns", "sw")

    async def main() -> int:
        queue: WorkQueue[tuple[str, str]] = WorkQueue(reconciler.reconcile_key, workers=1)
        wake = suggestion_waker(asyncio.get_running_loop(), reconciler, queue)
        threads = [threading.Thread(target=wake, args=(uid,)) for uid in ("uid-1", "gone")]
        for thread in threads:
            thread.start()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(0)
        return queue.depth()

    assert asyncio.run(main()) == 1  # the known sweep is queued; an unknown uid is ignored


def test_a_suggestion_that_missed_a_feedback_is_used_not_computed_again() -> None:
    """A trial finishing while the sweep's suggestion was computed changed its request (one more feedback):
    the finished suggestion was dropped and another computed from the back of the queue. A sweep whose trials
    finish more often than a suggestion takes (15 s with 500 trials) got none, its slots draining, while its
    dropped suggestions held the one worker every GP-bandit sweep shares. A suggestion for the same trial
    index is now used (it saw fewer feedbacks; its trial records how many): one computation, not two."""
    from pax_operator.sweep.vizier import Suggester
    from sweep_stub_suggest import slow_suggestion

    def usable(key: tuple[Any, ...]) -> bool:
        return key[0] == 0 and key[1] <= 1

    told: list[str] = []
    suggester = Suggester(deadline=600.0, function=slow_suggestion, on_done=told.append)
    try:
        assert suggester.ask("A", (0, 0, 1), (0.3, "A")) is None
        assert suggester.ask("A", (0, 1, 2), (0.3, "A2"), usable=usable) is None  # a trial finished
        assert "A" not in suggester._queue  # waits for the one being computed
        _wait(lambda: "A" in told)
        assert suggester.ask("A", (0, 1, 2), (0.3, "A2"), usable=usable) == ((0, 0, 1), [{"tag": "A"}])
        assert told == ["A"] and suggester._current is None and not suggester._queue
        # a result for another index is never used: it did not know the trials created since
        assert suggester.ask("A", (1, 1, 1), (0.3, "A3"), usable=lambda k: k[0] == 1) is None
        _wait(lambda: told.count("A") == 2)
        assert suggester.poll("A", (1, 1, 1), (0.3, "A3")) == [{"tag": "A3"}]
    finally:
        suggester.close()


def test_a_used_suggestion_fills_only_the_free_slots_and_records_what_it_saw() -> None:
    from pax_operator.sweep.algorithms import Proposal
    from pax_operator.sweep.decide import SweepRef, TrialResult, render_trial
    from pax_operator.sweep.spec import PaxSweepSpec

    class Stale:
        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **kw: Any) -> Any:
            assert key[:2] == (1, 1)  # trial 1 next, one feedback (trial 0's)
            assert kw["usable"]((1, 0, 8)) and not kw["usable"]((0, 0, 8))
            points = [{"learning_rate": f"0.0{n + 1}"} for n in range(8)]
            return (1, 0, 8), points  # computed before trial 0's feedback, for more free slots

        def forget(self, uid: str) -> None:
            return None

    sweep = _sweep_object(algorithm={"name": "gpBandit"})
    spec = PaxSweepSpec.model_validate(sweep["spec"])
    point = {"learning_rate": "0.05"}
    first = render_trial(
        SweepRef("sw", "ns", "uid-1"),
        spec,
        sweep["spec"]["template"],
        0,
        Proposal(json.dumps(point), point),
        0,
    )
    first["metadata"]["uid"] = "t0"
    first["metadata"]["annotations"]["pax.dev/sweep-result"] = TrialResult("Succeeded", 1.0, seq=0).to_json()
    first["status"] = {"phase": "Succeeded", "progress": {"metrics": {"eval_test/loss": 1.0}, "step": 10}}
    api = FakeApi()
    api.answers["GET paxsweeps"] = {**sweep, "status": {"phase": "Running", "trials": {"created": 1}}}
    api.answers["LIST paxjobs"] = {"items": [first]}
    SweepReconciler(api.clients(), suggester=Stale()).reconcile("ns", "sw")  # type: ignore[arg-type]
    bodies = _created(api)
    assert [b["metadata"]["name"] for b in bodies] == ["sw-1", "sw-2"]  # parallelTrials 2: 2 of the 8
    records = [json.loads(b["metadata"]["annotations"]["pax.dev/sweep-trial"]) for b in bodies]
    assert [r["params"]["learning_rate"] for r in records] == ["0.01", "0.02"]
    assert [r["after"] for r in records] == [0, 0]  # the feedbacks the suggestion saw


def test_trial_changes_wait_in_proportion_to_the_sweeps_pass() -> None:
    """Every trial PaxJob change (each progress scrape of each running trial: ~100 a second with 1,000
    running) reconciled the sweep at once, so a sweep of 10,000 trials (a 10 MB LIST, 0.4 s of CPU a pass)
    ran passes back to back. A change now waits TRIAL_CHANGE_DUTY times the sweep's last pass (0.5-30 s),
    and every change meanwhile joins that one pass."""
    from pax_operator.sweep.reconcile import TRIAL_CHANGE_DELAY_SECONDS, TRIAL_CHANGE_DUTY

    ticks = iter([0.0, 0.01, 10.0, 12.0, 100.0, 160.0])  # each pass: (start, end) on a fake clock
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients(), clock=lambda: next(ticks))
    low, high = TRIAL_CHANGE_DELAY_SECONDS
    assert reconciler.trial_change_delay(("ns", "sw")) == low  # never reconciled yet
    reconciler.reconcile_key(("ns", "sw"))  # a cheap pass: 10 ms
    assert reconciler.trial_change_delay(("ns", "sw")) == low
    reconciler.reconcile_key(("ns", "sw"))  # a 2 s pass
    assert reconciler.trial_change_delay(("ns", "sw")) == 2.0 * TRIAL_CHANGE_DUTY
    reconciler.reconcile_key(("ns", "sw"))  # a minute
    assert reconciler.trial_change_delay(("ns", "sw")) == high


def test_a_deleted_sweep_leaves_no_pass_time_behind() -> None:
    """The pass that found a sweep gone forgot it, then recorded its pass time again: every deleted sweep
    left an entry in the reconciler for the life of the process."""
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients())
    reconciler.reconcile_key(("ns", "sw"))
    assert ("ns", "sw") in reconciler._pass_seconds  # a live sweep's pass is recorded
    del api.answers["GET paxsweeps"]
    api.fail["GET paxsweeps"] = 404
    for i in range(100):
        reconciler.reconcile_key(("ns", f"gone-{i}"))  # never seen, already gone
    reconciler.reconcile_key(("ns", "sw"))  # seen, then deleted
    assert reconciler._pass_seconds == {}


def test_a_stream_of_trial_changes_is_a_few_passes_not_back_to_back_ones() -> None:
    """10 s of trial changes, one every 10 ms, on a sweep whose pass takes 0.4 s (fake clock): 25 passes back
    to back before (each change queued the sweep at once), now one per 0.4 s × TRIAL_CHANGE_DUTY."""
    import asyncio
    import itertools

    import kopf
    from pax_operator.sweep.handlers import trial_changed
    from pax_operator.sweep.trials import TrialCache
    from pax_operator.workqueue import WorkQueue

    now = [0.0]
    passes: list[float] = []

    def one_pass(key: tuple[str, str]) -> None:
        passes.append(now[0])
        now[0] += 0.4

    class Measured:
        def trial_change_delay(self, key: tuple[str, str]) -> float:
            return 4.0  # TRIAL_CHANGE_DUTY × its 0.4 s pass

    async def main() -> None:
        memo = kopf.Memo()
        memo.sweep_queue = WorkQueue(one_pass, workers=1, clock=lambda: now[0])
        memo.sweep_reconciler = Measured()
        memo.sweep_trials = TrialCache({})
        trial = {"metadata": {"name": "sw-0", "labels": {"pax.dev/sweep-name": "sw"}}}
        while now[0] < 10.0:
            trial_changed(memo, "MODIFIED", "ns", trial)
            memo.sweep_queue.promote_due()
            if memo.sweep_queue.depth():
                await memo.sweep_queue.process(("ns", "sw"))
            now[0] += 0.01

    asyncio.run(main())
    assert 1 <= len(passes) <= 3  # was 25
    assert all(later - earlier >= 4.0 for earlier, later in itertools.pairwise(passes))


def test_a_sweep_blocked_for_an_hour_posts_one_event_not_one_per_retry() -> None:
    """A trial creation forbidden (403: a full ResourceQuota) is retried every 30 s; each retry posted a new
    TrialCreationBlocked Event (never aggregated: 120 Event objects an hour per blocked sweep). The condition
    keeps the state; the Event is now posted when it turns True or its message changes."""
    api = FakeApi()
    sweep = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    api.fail["POST paxjobs"] = [403] * 4
    reconciler = SweepReconciler(api.clients())
    for retry in range(4):
        api.answers["GET paxsweeps"] = sweep
        api.calls.clear()
        api.bodies.clear()
        reconciler.reconcile("ns", "sw")
        calls = list(zip(api.calls, api.bodies, strict=True))
        status = next(b for c, b in calls if c == "PUT paxsweeps/status")["status"]
        sweep = {**sweep, "status": status}
        events = [b["reason"] for c, b in calls if c == "POST events"]
        assert events == (["TrialCreationBlocked"] if retry == 0 else [])
        assert [c["status"] for c in status["conditions"] if c["type"] == "TrialCreationBlocked"] == ["True"]


def test_a_gp_sweep_given_part_of_its_points_asks_for_the_rest_at_once() -> None:
    """8 points a call, 20 free slots: after creating 8 the sweep asks again at once (at the back of the
    queue), not after the 10 s a sweep waiting for its suggestion sleeps."""

    class Eight:
        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> Any:
            return key, [{"learning_rate": f"0.0{n + 1}"} for n in range(key[2])]

        def forget(self, uid: str) -> None:
            return None

    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object(
        algorithm={"name": "gpBandit"}, maxTrials=20, parallelTrials=20
    )
    api.answers["LIST paxjobs"] = {"items": []}
    delay = SweepReconciler(api.clients(), suggester=Eight()).reconcile("ns", "sw")  # type: ignore[arg-type]
    assert len(_created(api)) == 8 and delay == 0.0


def test_a_gp_suggestion_sees_a_bounded_history_the_best_and_the_most_recent() -> None:
    """Every completed trial went to the GP (its fit grows with the cube of the trials: 15 s after 500,
    110 s after 1,000, 150 s after 2,000 with 32 parameters): a gpBandit sweep of maxTrials 10,000 passed
    the 600 s deadline at every suggestion, holding the worker every GP-bandit sweep shares for the whole
    deadline each time, for ever. It now sees the best MAX_GP_COMPLETED // 2 and the most recent others, in
    feedback order, and the MAX_GP_ACTIVE most recent running trials."""
    from pax_operator.sweep.decide import SweepPlan, TrialResult, TrialView
    from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus
    from pax_operator.sweep.vizier import MAX_GP_ACTIVE, MAX_GP_COMPLETED, bounded_history

    history: list[tuple[dict[str, str], float | None]] = [
        ({"learning_rate": str(n)}, None if n % 7 == 0 else float((n * 37) % 1000)) for n in range(2000)
    ]
    kept = bounded_history(history, maximize=False)
    assert len(kept) == MAX_GP_COMPLETED
    positions = [history.index(h) for h in kept]
    assert positions == sorted(positions)  # feedback order kept
    feasible = sorted((v, n) for n, (_, v) in enumerate(history) if v is not None)
    assert {n for _, n in feasible[: MAX_GP_COMPLETED // 2]} <= set(positions)  # the best
    assert positions[-1] == 1999 and set(range(1999 - 200, 2000)) <= set(positions)  # the most recent
    assert bounded_history(history[:10], maximize=True) == history[:10]
    assert kept != bounded_history(history, maximize=True)

    class Recording:
        args: tuple[Any, ...] = ()

        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> None:
            Recording.args = args

    spec = PaxSweepSpec.model_validate(sweep_spec(algorithm={"name": "gpBandit"}, maxTrials=5000))
    trials = [
        TrialView(
            name=f"sw-{n}",
            uid=f"u{n}",
            index=n,
            dna="{}",
            params={"learning_rate": "0.01"},
            result=TrialResult("Succeeded", float(n), seq=n) if n < 3000 else None,
        )
        for n in range(3500)
    ]
    reconciler = SweepReconciler(clients=None, suggester=Recording())  # type: ignore[arg-type]
    reconciler._bandit("u", spec, PaxSweepStatus(), trials, SweepPlan(new_trials=1), 3500, 3000)
    completed, active = Recording.args[4], Recording.args[5]
    assert len(completed) == MAX_GP_COMPLETED and len(active) == MAX_GP_ACTIVE  # were 3000 and 500
