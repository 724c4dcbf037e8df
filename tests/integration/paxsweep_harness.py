"""PaxSweep integration harness: create sweeps, read their trial PaxJobs, play the trials' outcomes by
patching the trial PaxJobs' status (no kubelet runs in this tier: the trainer's results are simulated)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from kubernetes import client
from paxjob_harness import NamespacedObjects, cpu_job, wait_for

GROUP, VERSION = "pax.dev", "v1alpha1"
LR = {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"}


def sweep_spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": cpu_job(hosts=1),
        "parameters": [dict(LR)],
        "objective": {"metric": "eval_test/loss"},
        "maxTrials": 6,
        "parallelTrials": 2,
    }
    spec.update(extra)
    return spec


def lr_objective(params: dict[str, str]) -> float:
    """A deterministic 'loss' with its optimum at learning_rate = 10^-2.5."""
    return round((math.log10(float(params["learning_rate"])) + 2.5) ** 2 + 0.1, 6)


@dataclass
class Sweeps(NamespacedObjects):
    kind: ClassVar[str] = "PaxSweep"
    plural: ClassVar[str] = "paxsweeps"
    custom: client.CustomObjectsApi
    namespace: str

    def trials(self, sweep: str) -> list[dict[str, Any]]:
        """The sweep's trial PaxJobs, by index."""
        response = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "paxjobs", label_selector=f"pax.dev/sweep-name={sweep}"
        )
        return sorted(response["items"], key=lambda j: int(j["metadata"]["labels"]["pax.dev/trial-index"]))

    @staticmethod
    def params(trial: dict[str, Any]) -> dict[str, str]:
        return json.loads(trial["metadata"]["annotations"]["pax.dev/sweep-trial"])["params"]

    @staticmethod
    def result(trial: dict[str, Any]) -> dict[str, Any] | None:
        text = (trial["metadata"].get("annotations") or {}).get("pax.dev/sweep-result")
        return None if text is None else json.loads(text)

    def unfinished(self, sweep: str) -> list[dict[str, Any]]:
        return [t for t in self.trials(sweep) if self.result(t) is None]

    def _patch_status(self, trial: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, "paxjobs", trial, {"status": status}
        )

    def succeed(self, trial: str, value: float, step: int = 100) -> None:
        """The trainer finished: its result's metrics land in status.progress (as the PaxJob reconciler
        records them)."""
        self._patch_status(
            trial, {"phase": "Succeeded", "progress": {"step": step, "metrics": {"eval_test/loss": value}}}
        )

    def measure(self, trial: str, step: int, value: float) -> None:
        """An intermediate evaluation, as scraped into status.progress."""
        self._patch_status(trial, {"progress": {"step": step, "metrics": {"eval_test/loss": value}}})

    def fail(self, trial: str, message: str, *, permanent: bool = False) -> None:
        condition = {"type": "Failed", "status": "True", "reason": "Error", "message": message}
        status: dict[str, Any] = {"phase": "Failed", "conditions": [condition]}
        if permanent:
            status["lastRestart"] = {"outcome": "Permanent", "reason": "ConfigError", "message": message}
        self._patch_status(trial, status)

    def wait_phase(self, sweep: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        return wait_for(
            f"{sweep} {phase}", lambda: (s := self.status(sweep)).get("phase") == phase and s, timeout
        )

    def drive(
        self,
        sweep: str,
        outcome: Callable[[dict[str, str]], float | None],
        *,
        parallel: int,
        max_trials: int,
        completions: int | None = None,
        on_completion: Callable[[int], None] = lambda done: None,
        timeout: float = 120,
    ) -> int:
        """Complete trials one at a time, lowest index first, each once the operator is quiescent (every
        earlier result recorded and every slot filled): a completion order independent of timing.
        `max_trials`: the sweep's maxTrials (or its space size, if smaller). Returns the peak number of
        unfinished trials seen."""
        done, peak = 0, 0
        while done < (max_trials if completions is None else completions):
            probe = functools.partial(self._quiescent, sweep, done, parallel, max_trials)
            unfinished = wait_for(f"{sweep}: quiescent after {done} completions", probe, timeout)
            if unfinished == [{}]:
                break
            peak = max(peak, len(unfinished))
            first = unfinished[0]
            value = outcome(self.params(first))
            if value is None:
                self.fail(first["metadata"]["name"], "simulated failure")
            else:
                self.succeed(first["metadata"]["name"], value)
            done += 1
            on_completion(done)
        return peak

    def _quiescent(
        self, sweep: str, done: int, parallel: int, max_trials: int
    ) -> list[dict[str, Any]] | None:
        trials = self.trials(sweep)
        recorded = sum(1 for t in trials if self.result(t) is not None)
        unfinished = [t for t in trials if self.result(t) is None]
        if recorded == done and len(unfinished) == min(parallel, max_trials - recorded):
            return unfinished or [{}]
        phase = self.status(sweep).get("phase")
        return [{}] if phase in ("Succeeded", "Failed") and recorded == done else None
