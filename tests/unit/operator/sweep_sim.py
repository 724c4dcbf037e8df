"""An in-memory PaxSweep simulation for unit tests: decide_sweep + Search + trial PaxJobs as dicts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pax_operator.spec import Progress
from pax_operator.sweep.algorithms import Record, Search
from pax_operator.sweep.decide import (
    ObservedSweep,
    SweepRef,
    decide_sweep,
    issued_trials,
    next_feedback_seq,
    render_trial,
    trial_view,
)
from pax_operator.sweep.describe import sweep_parameters
from pax_operator.sweep.spec import (
    ANNOTATION_MEASUREMENTS,
    ANNOTATION_RESULT,
    ANNOTATION_STOP,
    PaxSweepSpec,
    PaxSweepStatus,
)

NOW = datetime(2026, 11, 30, tzinfo=UTC)
TEMPLATE: dict[str, Any] = {
    "experiment": "reverse_digits",
    "image": "pax:dev",
    "jobLogDir": "/logs/sweep",
    "topology": {"cpu": {"hosts": 1}},
}


def sweep_spec(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "template": dict(TEMPLATE),
        "parameters": [{"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"}],
        "objective": {"metric": "eval_test/loss"},
        "maxTrials": 6,
        "parallelTrials": 2,
    }
    doc.update(fields)
    return doc


class Sim:
    """Plays the reconciler (without the API): trials are dicts, outcomes are set by the test."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.raw = spec
        self.spec = PaxSweepSpec.model_validate(spec)
        self.status = PaxSweepStatus()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.search: Search | None = None
        self.ref = SweepRef("sw", "ns", "uid-1")

    def restart(self) -> None:
        """Forget the in-memory algorithm, as an operator restart does."""
        self.search = None

    def _search(self) -> Search:
        trials = [t for t in (trial_view(j) for j in self.jobs.values()) if t is not None]
        if self.search is None:
            self.search = Search(self.spec, sweep_parameters(self.spec, self.status.search_space))
            records = []
            for t in trials:
                assert t is not None
                reward = None
                if t.result is not None and t.result.objective is not None:
                    reward = self.spec.objective.reward(t.result.objective)
                seq, credited = (t.result.seq, t.result.credited) if t.result else (None, True)
                records.append(Record(t.index, t.dna, t.after, seq, reward, credited))
            self.search.replay(
                records, issued_trials(trials, self.status), next_feedback_seq(trials, self.status)
            )
        return self.search

    def step(self) -> Any:
        search = self._search()
        trials = [t for t in (trial_view(j) for j in self.jobs.values()) if t is not None]
        size = search.space.size
        exhausted = search.exhausted or (
            self.spec.algorithm.name == "grid" and size is not None and search.proposed >= size
        )
        plan = decide_sweep(ObservedSweep(self.ref, self.spec, self.status, trials, NOW, exhausted=exhausted))
        by_name = {t.name: t for t in trials}
        for name, m in plan.measurements:
            self.jobs[name]["metadata"]["annotations"][ANNOTATION_MEASUREMENTS] = m.to_json()
        seq = next_feedback_seq(trials, self.status)
        for name, result in plan.results:
            recorded = replace(result, seq=seq)
            self.jobs[name]["metadata"]["annotations"][ANNOTATION_RESULT] = recorded.to_json()
            seq += 1
            reward = None if result.objective is None else self.spec.objective.reward(result.objective)
            if by_name[name].dna and result.credited:  # as the reconciler does
                search.feedback(by_name[name].dna, reward)
            else:
                search.skip_feedback()
        for name, reason in plan.stops:
            self.jobs[name]["metadata"]["annotations"][ANNOTATION_STOP] = reason
            self.jobs[name]["spec"]["suspend"] = True
        created = 0
        next_index = issued_trials(trials, self.status)
        for offset in range(plan.new_trials):
            proposal = search.propose()
            if proposal is None:
                break
            body = render_trial(
                self.ref, self.spec, self.raw["template"], next_index + offset, proposal, search.fed
            )
            body["metadata"]["uid"] = f"uid-{next_index + offset}"
            self.jobs[body["metadata"]["name"]] = json.loads(json.dumps(body))
            created += 1
        if plan.status is not None:
            missing = plan.new_trials - created
            plan.status.trials.created -= missing
            plan.status.trials.running -= missing
            self.status = plan.status
        return plan

    def running(self) -> list[dict[str, Any]]:
        return sorted(
            (j for j in self.jobs.values() if "pax.dev/sweep-result" not in j["metadata"]["annotations"]),
            key=lambda j: int(j["metadata"]["labels"]["pax.dev/trial-index"]),
        )

    def params(self, name: str) -> dict[str, str]:
        return json.loads(self.jobs[name]["metadata"]["annotations"]["pax.dev/sweep-trial"])["params"]

    def set_status(
        self, name: str, phase: str, metrics: dict[str, float] | None = None, **extra: Any
    ) -> None:
        status = self.jobs[name].setdefault("status", {})
        status["phase"] = phase
        progress = status.setdefault("progress", {})
        if metrics is not None:  # stored as the operator writes them: JSON has no NaN, so those go by name
            stored = Progress(metrics=metrics).model_dump(mode="json", by_alias=True)
            progress.pop("nonFiniteMetrics", None)
            progress.update({key: stored[key] for key in ("metrics", "nonFiniteMetrics") if key in stored})
        progress.update(extra)

    def run(
        self, outcome: Callable[[str, dict[str, str]], tuple[str, float | None]], steps: int = 200
    ) -> None:
        """Until the sweep ends: complete the lowest running trial with outcome(name, params) each step."""
        for _ in range(steps):
            self.step()
            if self.status.phase is not None and self.status.phase.is_terminal:
                return
            running = self.running()
            if running:
                name = running[0]["metadata"]["name"]
                phase, value = outcome(name, self.params(name))
                metrics = {} if value is None else {"eval_test/loss": value}
                self.set_status(name, phase, metrics, step=100, evalStep=100)
        raise AssertionError("the sweep did not end")
