"""PaxSweep's kopf wiring (imported by pax_operator.handlers, after its start-up handler): events only enqueue
sweep keys on its own work queue, so slow sweeps never hold the PaxJob workers.

kopf watches the PaxSweeps. The trials are the operator's PaxJob informer's (memo.jobs): passes read them
from it (sweep.trials) and its callback, `trial_changed`, wakes their sweeps; no watch of PaxJobs of our own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf

from pax_operator.adapters.kube import Clients
from pax_operator.adapters.lease import fence_writes
from pax_operator.spec import GROUP, VERSION
from pax_operator.sweep.reconcile import SweepReconciler
from pax_operator.sweep.spec import SWEEP_PLURAL
from pax_operator.sweep.trials import TrialCache, sweeps_of
from pax_operator.workqueue import WorkQueue

SWEEP_WORKERS = 2
LEADERSHIP_POLL_SECONDS = 0.5


@kopf.on.startup()
async def start_sweeps(memo: kopf.Memo, **_: Any) -> None:
    """A work queue of its own; it runs only while this replica leads (as the PaxJob queue does), and
    takes no key before the PaxJob informer's first listing (no pass sees a sweep without its trials)."""
    clients = Clients.connect(workers=SWEEP_WORKERS)
    fence_writes(memo, clients)  # leader election: no write unless the Lease is confirmed
    memo.sweep_trials = TrialCache(memo.jobs, asyncio.get_running_loop())
    memo.sweep_reconciler = SweepReconciler(clients, memo.sweep_trials)
    memo.sweep_queue = WorkQueue(
        memo.sweep_reconciler.reconcile_key, workers=SWEEP_WORKERS, ready=(memo.jobs.synced,)
    )
    memo.sweep_reconciler.suggester.on_done = suggestion_waker(
        asyncio.get_running_loop(), memo.sweep_reconciler, memo.sweep_queue
    )
    memo.sweep_leading = asyncio.create_task(_start_when_leading(memo), name="paxsweep-leading")


def suggestion_waker(
    loop: asyncio.AbstractEventLoop, reconciler: SweepReconciler, queue: WorkQueue[tuple[str, str]]
) -> Callable[[str], None]:
    """What the GP-bandit worker's thread calls when a sweep's suggestion is done: queue that sweep now."""

    def wake(uid: str) -> None:
        key = reconciler.key_of(uid)
        if key is not None:
            loop.call_soon_threadsafe(queue.add, key)

    return wake


async def _start_when_leading(memo: kopf.Memo) -> None:
    leadership = memo.get("leadership")
    while leadership is not None and not leadership.started:
        await asyncio.sleep(LEADERSHIP_POLL_SECONDS)
    memo.sweep_queue.start()


@kopf.on.cleanup()
async def stop_sweeps(memo: kopf.Memo, **_: Any) -> None:
    waiting = memo.get("sweep_leading")
    if waiting is not None:
        waiting.cancel()
    queue = memo.get("sweep_queue")
    if queue is not None:
        await queue.stop()


@kopf.on.event(GROUP, VERSION, SWEEP_PLURAL)
async def paxsweep_event(event: kopf.RawEvent, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Any change to a PaxSweep (including the initial listing after a restart): reconcile it. A deleted
    one too: the reconcile finds it gone and drops its algorithm and its GP-bandit suggestion."""
    if event.get("type") == "DELETED":
        memo.sweep_queue.forget((namespace, name))  # its pending requeue and failure backoff
    memo.sweep_queue.add((namespace, name))


def trial_changed(memo: kopf.Memo, kind: str, namespace: str, body: dict[str, Any]) -> None:
    """The PaxJob informer's callback, for every PaxJob: a trial's change reconciles its sweep soon (the
    changes until then are one pass). A change that shows (or a deletion that ends) the last of the trial
    writes a sweep's pass waits for reconciles that sweep now: it waits for exactly this."""
    queue = memo.get("sweep_queue")
    if queue is None:  # the sweeps have not started: kopf's first listing of them reconciles each
        return
    settled = memo.sweep_trials.observe(kind, body)
    if settled is not None:
        queue.add(settled)
    for sweep in sweeps_of(body):
        key = (namespace, sweep)
        if key != settled:  # the pass queued now reads this change too
            queue.add(key, memo.sweep_reconciler.trial_change_delay(key))
