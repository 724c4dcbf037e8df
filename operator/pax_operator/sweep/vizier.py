"""GP-bandit suggestions (OSS Vizier VizierGPBandit), computed in a worker process off the reconcile workers.

A suggestion costs seconds (a GP fit in JAX), so the reconciler submits one per sweep to a single-process pool
and looks again when told it is done (`on_done`); nothing is kept between suggestions: each is a pure function
of the search space, the seed, the trial's index and the trials it has seen (completed, in feedback order, and
still running), all read back from the trial records — the same after an operator restart.

`python -m pax_operator.sweep.vizier --bench N` prints the time of one suggestion after N completed trials.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from pax_operator.sweep.spec import float_override

log = logging.getLogger(__name__)
SUGGEST_DEADLINE_SECONDS = 600.0  # of one suggestion's own compute (its time in the queue not counted)
MAX_SUGGESTIONS_PER_CALL = 8  # points asked in one call (parallelTrials may be 1000): the rest next time
# trials a suggestion sees (32 parameters, on the loaded 2-core machine: 15 s after 500 completed trials,
# 110 s after 1,000, 150 s after 2,000, past the deadline long before 10,000, when every suggestion of the
# sweep timed out and held the worker all GP-bandit sweeps share for the whole deadline): the best half and
# the most recent rest of the completed ones, and the most recent running ones
MAX_GP_COMPLETED = 500
MAX_GP_ACTIVE = 100
PARENT_POLL_SECONDS = 1.0  # a suggestion still running after this is abandoned (the pool restarts)

type Params = dict[str, str]


def suggest(
    parameters: list[dict[str, Any]],
    goal: str,
    seed: int,
    index: int,
    completed: list[tuple[Params, float | None]],
    active: list[Params],
    count: int,
) -> list[Params]:
    """`count` points from VizierGPBandit after `completed` (None: infeasible) with `active` still running."""
    import jax
    from vizier import algorithms as vza
    from vizier import pyvizier as vz
    from vizier._src.algorithms.designers import gp_bandit

    problem = vz.ProblemStatement()
    root = problem.search_space.root
    kinds: dict[str, str] = {}
    bounds = {p["name"]: (float(p["min"]), float(p["max"])) for p in parameters if p["type"] == "float"}
    for p in parameters:
        scale = vz.ScaleType.LOG if p.get("scale") == "log" else vz.ScaleType.LINEAR
        kinds[p["name"]] = p["type"]
        if p["type"] == "float":
            root.add_float_param(p["name"], float(p["min"]), float(p["max"]), scale_type=scale)
        elif p["type"] == "int":
            root.add_int_param(p["name"], math.ceil(p["min"]), math.floor(p["max"]), scale_type=scale)
        else:
            root.add_categorical_param(p["name"], list(p["values"]))
    goal_kind = vz.ObjectiveMetricGoal.MAXIMIZE if goal == "maximize" else vz.ObjectiveMetricGoal.MINIMIZE
    problem.metric_information.append(vz.MetricInformation("objective", goal=goal_kind))

    def typed(params: Params) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, text in params.items():
            kind = kinds.get(name)
            out[name] = float(text) if kind == "float" else int(text) if kind == "int" else text
        return out

    done = []
    for number, (params, value) in enumerate(completed, start=1):
        trial = vz.Trial(id=number, parameters=typed(params))
        if value is None or not math.isfinite(value):
            trial.complete(vz.Measurement(), infeasibility_reason="failed")
        else:
            trial.complete(vz.Measurement({"objective": value}))
        done.append(trial)
    running = [
        vz.Trial(id=len(completed) + 1 + n, parameters=typed(params)) for n, params in enumerate(active)
    ]
    designer = gp_bandit.VizierGPBandit(problem, rng=jax.random.fold_in(jax.random.PRNGKey(seed), index))
    designer.update(vza.CompletedTrials(done), vza.ActiveTrials(running))
    out = []
    for suggestion in designer.suggest(count):
        params = {}
        for name, value in suggestion.parameters.as_dict().items():
            kind = kinds[name]
            params[name] = (
                float_override(value, *bounds[name])
                if kind == "float"
                else str(int(value))
                if kind == "int"
                else str(value)
            )
        out.append(params)
    return out


def bounded_history(
    completed: list[tuple[Params, float | None]], maximize: bool, limit: int = MAX_GP_COMPLETED
) -> list[tuple[Params, float | None]]:
    """At most `limit` of `completed` (in feedback order; None: infeasible), in the same order: the best
    `limit // 2` feasible ones and the most recent of the others. A pure function of the records."""
    if len(completed) <= limit:
        return completed
    feasible = [n for n, (_, value) in enumerate(completed) if value is not None and math.isfinite(value)]
    best = sorted(feasible, key=lambda n: (-(completed[n][1] or 0.0) if maximize else completed[n][1], n))
    keep = set(best[: limit // 2])
    for n in range(len(completed) - 1, -1, -1):
        if len(keep) >= limit:
            break
        keep.add(n)
    return [completed[n] for n in sorted(keep)]


def _exit_with_parent(parent: int) -> None:
    """In the worker: exit as soon as the operator is gone (a SIGKILLed operator leaves no GP fit running)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-operator", daemon=True).start()


@dataclass
class _Job:
    key: tuple[Any, ...]
    args: tuple[Any, ...]
    future: Future[list[Params]] | None = None  # None while queued
    started: float = 0.0  # when the worker took it: the deadline counts from here


@dataclass
class Suggester:
    """One worker process for every GP-bandit sweep, one suggestion at a time, sweeps in FIFO order.

    A job is submitted only when the worker is idle, so its deadline counts its own compute, never the
    queue; a job past the deadline restarts the worker, and as no other job was submitted, none is lost."""

    deadline: float = SUGGEST_DEADLINE_SECONDS
    function: Callable[..., list[Params]] = suggest  # what the worker runs (picklable by reference)
    _pool: ProcessPoolExecutor | None = None
    _queue: dict[str, _Job] = field(default_factory=dict)  # waiting, per sweep, in arrival order
    _current: tuple[str, _Job] | None = None  # the job the worker runs
    _finished: dict[str, _Job] = field(default_factory=dict)  # done, until its sweep polls
    _expired: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # sweep → key of its timed-out job
    _lock: threading.RLock = field(default_factory=threading.RLock)  # a done callback may run inside _advance
    # told a sweep's uid when its suggestion is done, failed or abandoned (from the pool's thread, or a
    # poller's): the sweep looks again at once, instead of a full reconcile pass every second while it waits
    on_done: Callable[[str], None] | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def poll(self, sweep_uid: str, key: tuple[Any, ...], args: tuple[Any, ...]) -> list[Params] | None:
        """The suggestion for exactly `key` when ready; else queue it (once) and return None (see `ask`)."""
        done = self.ask(sweep_uid, key, args)
        return None if done is None else done[1]

    def ask(
        self,
        sweep_uid: str,
        key: tuple[Any, ...],
        args: tuple[Any, ...],
        usable: Callable[[tuple[Any, ...]], bool] | None = None,
    ) -> tuple[tuple[Any, ...], list[Params]] | None:
        """(the key it was computed for, the suggestion) when ready; else queue it (once) and return None:
        look again later (or when `on_done` says so).

        `key` names what the suggestion depends on (index, feedbacks seen, count). A result, or a job being
        computed, for another key that `usable` accepts is taken (or waited for) instead of asking again;
        one it does not is dropped. Raises the worker's error, or TimeoutError past the deadline."""

        def fits(other: tuple[Any, ...]) -> bool:
            return other == key or (usable is not None and usable(other))

        with self._lock:
            self._advance()
            done = self._finished.pop(sweep_uid, None)
            if done is not None and fits(done.key):
                assert done.future is not None
                self._queue.pop(sweep_uid, None)  # its next request goes to the back of the queue
                return done.key, done.future.result()
            expired = self._expired.pop(sweep_uid, None)
            if expired is not None and fits(expired):
                raise TimeoutError(f"GP-bandit suggestion took more than {self.deadline:.0f}s")
            current = self._current
            queued = self._queue.get(sweep_uid)
            if (current is not None and current[0] == sweep_uid and fits(current[1].key)) or (
                queued is not None and queued.key == key
            ):
                return None
            self._queue[sweep_uid] = _Job(key, args)  # a changed request keeps its place in the queue
            self._advance()
            return None

    def _advance(self) -> None:
        """Collect the running job when done (or past its deadline), then start the next queued one."""
        if self._current is not None:
            uid, job = self._current
            assert job.future is not None
            if job.future.done():
                self._current = None
                self._finished[uid] = job
                if not job.future.cancelled() and isinstance(job.future.exception(), BrokenProcessPool):
                    self._restart()
            elif time.monotonic() - job.started > self.deadline:
                self._current = None
                self._expired[uid] = job.key
                self._restart()
                self._tell(uid)
        if self._current is None and self._queue:
            uid = next(iter(self._queue))
            job = self._queue.pop(uid)
            job.future = self._executor().submit(self.function, *job.args)
            job.started = time.monotonic()
            self._current = (uid, job)
            job.future.add_done_callback(functools.partial(self._finished_callback, uid))

    def _finished_callback(self, uid: str, _: Future[list[Params]]) -> None:
        """The worker is free: tell the sweep whose suggestion it was, and the next one in the queue (whose
        poll starts its job: the worker never waits for the first sweep's next pass)."""
        with self._lock:
            waiting = next(iter(self._queue), None)
        self._tell(uid)
        if waiting is not None:
            self._tell(waiting)

    def _tell(self, uid: str) -> None:
        if self.on_done is not None:
            try:
                self.on_done(uid)
            except Exception as err:  # the operator is stopping (its loop closed): nobody to tell
                log.debug("could not tell sweep %s its suggestion is done: %s", uid, err)

    def forget(self, sweep_uid: str) -> None:
        """Drop a (deleted) sweep's jobs; one the worker runs is killed with the worker, which would stay
        busy up to the deadline for nobody (the others' jobs are queued, not submitted: none is lost)."""
        with self._lock:
            self._queue.pop(sweep_uid, None)
            self._finished.pop(sweep_uid, None)
            self._expired.pop(sweep_uid, None)
            if self._current is not None and self._current[0] == sweep_uid:
                self._current = None
                self._restart()
                self._advance()

    def _restart(self) -> None:
        if self._pool is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.kill()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._restart()


def _bench(completed: int) -> dict[str, Any]:
    parameters = [
        {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"},
        {"name": "num_layers", "type": "int", "min": 1, "max": 8},
    ]
    history: list[tuple[Params, float | None]] = []
    for n in range(completed):
        lr = 10 ** (-4 + 3 * ((n * 0.618) % 1.0))
        history.append(
            ({"learning_rate": f"{lr:.6g}", "num_layers": str(1 + n % 8)}, (math.log10(lr) + 2.5) ** 2)
        )
    t0 = time.perf_counter()
    suggest(parameters, "minimize", 0, completed, history[:1], [], 1)  # imports and compiles
    warm = time.perf_counter()
    point = suggest(parameters, "minimize", 0, completed, history, [], 1)
    end = time.perf_counter()
    return {
        "completed_trials": completed,
        "first_call_s": round(warm - t0, 2),
        "suggestion_s": round(end - warm, 2),
        "point": point[0],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=int, default=50, help="completed trials before the timed suggestion")
    print(json.dumps(_bench(parser.parse_args().bench)))
