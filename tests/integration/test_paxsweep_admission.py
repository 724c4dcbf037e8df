"""The real apiserver rejects malformed PaxSweeps with field paths (the PaxSweep CRD's schema and CEL);
spec.template is validated exactly like a PaxJob; defaults, short name and printer columns work."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from paxjob_harness import cpu_job
from paxsweep_harness import LR
from paxsweep_harness import sweep_spec as valid_sweep

pytestmark = pytest.mark.integration


def _with(path: str, value: Any, *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid sweep spec with the dotted `path` set to `value` (None deletes it); digits index lists."""
    spec = copy.deepcopy(base or valid_sweep())
    *parents, leaf = path.split(".")
    node: Any = spec
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    elif leaf.isdigit():
        node[int(leaf)] = value
    else:
        node[leaf] = value
    return spec


def _param(**fields: Any) -> list[dict[str, Any]]:
    return [{**LR, **fields}]


# (case, spec, substrings the apiserver's message must contain: the field path and what is wrong)
MALFORMED: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("missing template", _with("template", None), ("spec.template: Required value",)),
    ("missing objective", _with("objective", None), ("spec.objective: Required value",)),
    (
        "parallelTrials above maxTrials",
        valid_sweep(maxTrials=2, parallelTrials=3),
        ("spec.parallelTrials: Invalid value", "parallelTrials must be at most maxTrials"),
    ),
    ("maxTrials 0", valid_sweep(maxTrials=0), ("spec.maxTrials: Invalid value: 0",)),
    ("maxTrials too many", valid_sweep(maxTrials=20000), ("spec.maxTrials: Invalid value: 20000",)),
    ("parallelTrials 0", valid_sweep(parallelTrials=0), ("spec.parallelTrials: Invalid value: 0",)),
    (
        "negative maxFailedTrials",
        valid_sweep(maxFailedTrials=-1),
        ("spec.maxFailedTrials: Invalid value: -1",),
    ),
    (
        "grid over a float range",
        valid_sweep(algorithm={"name": "grid"}),
        ("spec.algorithm.name: Invalid value", "grid algorithm needs a finite space"),
    ),
    (
        "duplicate parameter names",
        valid_sweep(parameters=[dict(LR), {"name": "learning_rate", "type": "int", "min": 1, "max": 3}]),
        ("spec.parameters[1]: Duplicate value",),
    ),
    (
        "range not ordered",
        valid_sweep(parameters=_param(min=0.1, max=0.01)),
        ("spec.parameters[0].max: Invalid value", "min must be less than max"),
    ),
    (
        "int range without an integer",
        valid_sweep(parameters=[{"name": "num_layers", "type": "int", "min": 0.2, "max": 0.8}]),
        ("spec.parameters[0].max: Invalid value", "needs an integer between min and max"),
    ),
    (
        "range too wide for a float",
        valid_sweep(parameters=[{"name": "dropout", "type": "float", "min": -1e308, "max": 1e308}]),
        ("spec.parameters[0]: Invalid value", "must lie within -1e300..1e300"),
    ),
    (
        "grid over 5001 ints",
        valid_sweep(
            algorithm={"name": "grid"}, parameters=[{"name": "num", "type": "int", "min": 0, "max": 5000}]
        ),
        ("spec.parameters: Invalid value", "at most 4096 choices in all"),
    ),
    (
        "5 int choices of 1001 values",
        valid_sweep(parameters=[{"name": f"n{i}", "type": "int", "min": 0, "max": 1000} for i in range(5)]),
        ("spec.parameters: Invalid value", "at most 4096 choices in all"),
    ),
    (
        "17 discrete parameters of 256 values",
        valid_sweep(
            parameters=[
                {"name": f"d{i}", "type": "discrete", "values": [str(v) for v in range(256)]}
                for i in range(17)
            ]
        ),
        ("spec.parameters: Invalid value", "at most 4096 choices in all"),
    ),
    (
        "log scale from zero",
        valid_sweep(parameters=_param(min=0)),
        ("spec.parameters[0].scale: Invalid value", "log scale needs a float or int range with min > 0"),
    ),
    (
        "log scale over negatives",
        valid_sweep(parameters=_param(min=-2, max=-1)),
        ("spec.parameters[0].scale: Invalid value", "log scale needs"),
    ),
    (
        "log scale on a discrete parameter",
        valid_sweep(parameters=[{"name": "opt", "type": "discrete", "values": ["a", "b"], "scale": "log"}]),
        ("spec.parameters[0].scale: Invalid value", "log scale needs"),
    ),
    (
        "discrete without values",
        valid_sweep(parameters=[{"name": "opt", "type": "discrete"}]),
        ("spec.parameters[0]: Invalid value", "discrete parameters need values"),
    ),
    (
        "float without max",
        valid_sweep(parameters=[{"name": "dropout", "type": "float", "min": 0.0}]),
        ("spec.parameters[0]: Invalid value", "float and int parameters need min and max"),
    ),
    (
        "duplicate discrete values",
        valid_sweep(parameters=[{"name": "opt", "type": "discrete", "values": ["adam", "adam"]}]),
        ("spec.parameters[0].values[1]: Duplicate value",),
    ),
    (
        "unknown parameter type",
        valid_sweep(parameters=_param(type="bool")),
        ('spec.parameters[0].type: Unsupported value: "bool"',),
    ),
    (
        "parameter name not an identifier",
        valid_sweep(parameters=_param(name="learning-rate")),
        ("spec.parameters[0].name: Invalid value",),
    ),
    (
        "searched parameter also fixed in the template",
        valid_sweep(template=cpu_job(hosts=1, overrides={"learning_rate": "0.1"})),
        ("spec.template.overrides: Invalid value", "must not also be fixed in template.overrides"),
    ),
    (
        "both declared and experiment search spaces",
        valid_sweep(experimentSearchSpace=True),
        ("spec.parameters: Invalid value", "exactly one of them"),
    ),
    (
        "no search space",
        _with("parameters", None),
        ("spec.parameters: Invalid value", "exactly one of them"),
    ),
    (
        "unknown algorithm",
        valid_sweep(algorithm={"name": "bayes"}),
        ('spec.algorithm.name: Unsupported value: "bayes"',),
    ),
    (
        "tournament larger than the population",
        valid_sweep(algorithm={"name": "regularizedEvolution", "populationSize": 4, "tournamentSize": 8}),
        ("spec.algorithm.tournamentSize: Invalid value", "tournamentSize must be at most populationSize"),
    ),
    (
        "unknown goal",
        valid_sweep(objective={"metric": "eval_test/loss", "goal": "lower"}),
        ('spec.objective.goal: Unsupported value: "lower"',),
    ),
    ("empty metric", valid_sweep(objective={"metric": ""}), ("spec.objective.metric: Invalid value",)),
    (
        "lastN without meanOfLastN",
        valid_sweep(objective={"metric": "eval_test/loss", "lastN": 3}),
        ("spec.objective.lastN: Invalid value", "lastN applies to aggregation meanOfLastN only"),
    ),
    (
        "early-stopping rule by value and by rank",
        valid_sweep(earlyStopping={"rules": [{"step": 10, "threshold": 1.0, "percentile": 50}]}),
        ("spec.earlyStopping.rules[0]: Invalid value", "exactly one"),
    ),
    (
        "percentile 100",
        valid_sweep(earlyStopping={"rules": [{"step": 10, "percentile": 100}]}),
        ("spec.earlyStopping.rules[0].percentile: Invalid value",),
    ),
    (
        "early-stopping at step 0",
        valid_sweep(earlyStopping={"rules": [{"step": 0, "threshold": 1.0}]}),
        ("spec.earlyStopping.rules[0].step: Invalid value: 0",),
    ),
    (
        "early-stopping step above int32 (no trainer step reaches it)",
        valid_sweep(earlyStopping={"rules": [{"step": 2**31, "threshold": 1.0}]}),
        ("spec.earlyStopping.rules[0].step: Invalid value",),
    ),
    (
        "a TTL past datetime's range (the finished sweep's every pass raised OverflowError)",
        valid_sweep(ttlSecondsAfterFinished=10**12),
        ("spec.ttlSecondsAfterFinished: Invalid value",),
    ),
    ("a seed above int32", valid_sweep(algorithm={"seed": 2**31}), ("spec.algorithm.seed: Invalid value",)),
    (
        "early stopping with grid",
        valid_sweep(
            algorithm={"name": "grid"},
            parameters=[{"name": "num_layers", "type": "int", "min": 1, "max": 3}],
            earlyStopping={"rules": [{"step": 10, "threshold": 1.0}]},
        ),
        ("spec.earlyStopping: Invalid value", "not supported with the grid algorithm"),
    ),
    (
        "template: zero hosts (the PaxJob schema)",
        valid_sweep(template=cpu_job(hosts=0)),
        ("spec.template.topology.cpu.hosts: Invalid value: 0",),
    ),
    ("template: no image", _with("template.image", None), ("spec.template.image: Required value",)),
    (
        "template: a TTL (the trial would delete the sweep's record of it)",
        _with("template.ttlSecondsAfterFinished", 60),
        ("spec.template.ttlSecondsAfterFinished: Invalid value", "must not be set"),
    ),
    (
        "template: suspended (the trials would never finish)",
        _with("template.suspend", True),
        ("spec.template.suspend: Invalid value", "must not be true"),
    ),
    (
        "unknown field",
        valid_sweep(parameters=_param(step=0.1)),
        ('unknown field "spec.parameters[0].step"',),
    ),
    # Admitted before, and every trial then refused by the PaxJob CRD (the sweep failed TrialRefused):
    (
        "save_interval_steps searched beside template.checkpointIntervalSteps",
        _with(
            "template.checkpointIntervalSteps",
            100,
            base=valid_sweep(parameters=[{"name": "save_interval_steps", "type": "int", "min": 1, "max": 5}]),
        ),
        ("spec.template.checkpointIntervalSteps: Invalid value", "save_interval_steps is searched"),
    ),
    (
        "256 template overrides and a parameter",
        _with("template.overrides", {f"o{i}": "1" for i in range(256)}),
        ("spec.template.overrides: Invalid value", "at most 256 overrides in all"),
    ),
    (
        "a jobLogDir with no room for the trial's name",
        _with("template.jobLogDir", "gs://bucket/" + "d" * 1000),
        ("spec.template.jobLogDir: Invalid value", "at most 971 characters"),
    ),
    (
        "an int range beyond 64 bits",
        valid_sweep(parameters=[{"name": "seed_offset", "type": "int", "min": 1e19, "max": 1e19 + 50000}]),
        ("spec.parameters[0].max: Invalid value", "within -9e18..9e18"),
    ),
    (
        "template: overrides over 64 KiB in all (the PaxJob schema: every pod carries them)",
        _with("template.overrides", {f"o{i}": "x" * 4096 for i in range(17)}),
        ("spec.template.overrides: Invalid value", "at most 64 KiB"),
    ),
]


def _manifest(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxSweep", "metadata": {"name": name}, "spec": spec}
    )


def test_malformed_paxsweeps_are_rejected_with_field_paths(kubectl, pax_installed, namespace) -> None:
    assert len(MALFORMED) >= 20
    mismatches = []
    for index, (case, spec, expected) in enumerate(MALFORMED):
        result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(f"bad-{index}", spec))
        if result.returncode == 0 or not all(part in result.stderr for part in expected):
            mismatches.append(f"{case}: rc={result.returncode} stderr={result.stderr.strip()!r}")
    result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest("a" * 47, valid_sweep()))
    if result.returncode == 0 or "at most 46 characters" not in result.stderr:
        mismatches.append(f"name too long: {result.stderr.strip()!r}")
    assert mismatches == []
    listed = kubectl("get", "paxsweeps,paxjobs", "-n", namespace, "-o", "name", check=True)
    assert listed.stdout.strip() == ""


def test_defaults_short_name_and_columns(kubectl, pax_installed, namespace) -> None:
    result = kubectl("create", "-n", namespace, "-o", "json", "-f", "-", input=_manifest("ok", valid_sweep()))
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["algorithm"] == {"name": "random", "seed": 0, "populationSize": 20, "tournamentSize": 10}
    assert spec["objective"] == {"metric": "eval_test/loss", "goal": "minimize", "aggregation": "last"}
    assert spec["maxFailedTrials"] == 3 and spec["suspend"] is False
    assert spec["parameters"][0]["scale"] == "log"
    assert spec["template"]["mode"] == "train"  # PaxJob defaults apply inside the template too
    table = kubectl("get", "psw", "-n", namespace, check=True).stdout
    assert table.split("\n")[0].split() == ["NAME", "PHASE", "SUCCEEDED", "RUNNING", "FAILED", "BEST", "AGE"]
    everything = kubectl("get", "pax", "-n", namespace, "-o", "name", check=True).stdout.split()
    assert "paxsweep.pax.dev/ok" in everything


def test_search_space_algorithm_and_objective_are_immutable(kubectl, pax_installed, namespace) -> None:
    """The trials' records are points of the space, the algorithm's history and values of the objective:
    editing any would make them unreadable or wrong; budgets (maxTrials, suspend, goalValue) stay editable."""
    result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest("fixed", valid_sweep()))
    assert result.returncode == 0, result.stderr
    edits = [
        ({"parameters": _param(min=1e-3)}, ("spec.parameters: Invalid value", "parameters are immutable")),
        ({"algorithm": {"seed": 5}}, ("spec.algorithm: Invalid value", "algorithm is immutable")),
        (
            {"experimentSearchSpace": True, "parameters": None},
            ("spec.experimentSearchSpace: Invalid value", "experimentSearchSpace is immutable"),
        ),
        # The records hold values of the objective: a new metric or goal mixed them (a maximize goal
        # reached at once by an old loss value, that loss trial named the best).
        ({"objective": {"metric": "eval_test/accuracy"}}, ("spec.objective: Invalid value", "immutable")),
        ({"objective": {"goal": "maximize"}}, ("spec.objective: Invalid value", "immutable")),
        ({"objective": {"aggregation": "best"}}, ("spec.objective: Invalid value", "immutable")),
        ({"objective": {"valueForNaN": 10.0}}, ("spec.objective: Invalid value", "immutable")),
    ]
    mismatches = []
    for patch, expected in edits:
        body = json.dumps({"spec": patch})
        result = kubectl("patch", "psw", "fixed", "-n", namespace, "--type", "merge", "-p", body)
        if result.returncode == 0 or not all(part in result.stderr for part in expected):
            mismatches.append(f"{patch}: rc={result.returncode} stderr={result.stderr.strip()!r}")
    assert mismatches == []
    body = json.dumps({"spec": {"maxTrials": 8, "suspend": True, "objective": {"goalValue": 0.5}}})
    result = kubectl("patch", "psw", "fixed", "-n", namespace, "--type", "merge", "-p", body)
    assert result.returncode == 0, result.stderr


def test_int_ranges_holding_an_integer_are_accepted(kubectl, pax_installed, namespace) -> None:
    ranges = [(0.8, 1.2), (-1.5, -0.7), (3.0, 3.5), (-0.5, 0.5), (0.5, 10.5)]
    refused = []
    for index, (low, high) in enumerate(ranges):
        spec = valid_sweep(parameters=[{"name": "num_layers", "type": "int", "min": low, "max": high}])
        result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(f"int-{index}", spec))
        if result.returncode != 0:
            refused.append(f"[{low}, {high}]: {result.stderr.strip()}")
    assert refused == []


def test_the_benchmarks_sweeps_are_admitted(kubectl, pax_installed, namespace) -> None:
    """`make bench-sweep` creates these bodies: a refused one (a template that suspends its trials, say)
    broke the benchmark without any test noticing."""
    from pax_cluster.bench_sweep import ALGORITHMS, sweep_body

    for algorithm in ALGORITHMS:
        body = sweep_body(f"bench-{algorithm.lower()}", algorithm, trials=1000, parallel=20)
        result = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
        assert result.returncode == 0, f"{algorithm}: {result.stderr}"
