"""Overrides, PyGlove DNA, registry and WeightedScalars: in-process unit tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import pyglove as pg
import pytest
from pax_trainer import data, hparams, registry
from pax_trainer.errors import ConfigError
from pax_trainer.experiments.reverse_digits import ReverseDigits
from pax_trainer.metrics import Accumulator, WeightedScalar, merge

pytestmark = [pytest.mark.timeout(120)]


class SearchableReverse(ReverseDigits):
    learning_rate = pg.floatv(1e-4, 1e-1, scale="log")
    num_layers = pg.oneof([1, 2, 3])


def test_set_and_json_overrides_are_typed() -> None:
    exp = hparams.apply_overrides(
        ReverseDigits(),
        ["num_train_steps=7", "learning_rate=0.5", "async_checkpointing=false", "init_rules=a=>b"],
        '{"seed": 3, "warmup_steps": 2}',
    )
    assert (exp.num_train_steps, exp.learning_rate, exp.async_checkpointing) == (7, 0.5, False)
    assert (exp.seed, exp.warmup_steps, exp.init_rules) == (3, 2, "a=>b")
    assert ReverseDigits.num_train_steps == 200, "overrides must not leak into the class"


@pytest.mark.parametrize(
    ("sets", "json_text", "message"),
    [
        (["num_train_steps"], None, "malformed override"),
        (["=3"], None, "malformed override"),
        (["num_train_steps=1.5"], None, "invalid value"),
        (["nope=1"], None, "unknown hyperparameter 'nope'"),
        ([], '{"seed": "x"}', "invalid value"),
        ([], "[1]", "expected a JSON object"),
        (["sync_interval_steps=50"], None, "sync_interval_steps"),
        (["init_rules=nonsense"], None, "malformed init rule"),
        (["learning_rate=nan"], None, r"'nan' for hyperparameter learning_rate \(expected finite float\)"),
        (["weight_decay=-inf"], None, "expected finite float"),
        ([], '{"learning_rate": 1e400}', "expected finite float"),
        ([f"seed={2**64}"], None, r"hyperparameter seed \(expected int in int64\)"),
        (["seed=-1"], None, "invalid value -1 for hyperparameter seed"),
        (["data_seed=-3"], None, "invalid value -3 for hyperparameter data_seed"),
        ([r"init_rules=params\.(.*)=>params.\2"], None, "the regex has no group 2"),
    ],
)
def test_bad_overrides(sets: list[str], json_text: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hparams.apply_overrides(ReverseDigits(), sets, json_text)


@pytest.mark.parametrize("name", ["lm_tiny", "lm_1b", "reverse_digits"])
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("num_heads=5", "hyperparameter num_heads: model_dim .* must be a multiple of it"),
        ("num_layers=0", "hyperparameter num_layers: must be positive"),
        ("mlp_dim=-1", "hyperparameter mlp_dim"),
        ("attention=flash", "hyperparameter attention: one of nnx, xla, cudnn, auto"),
        ("remat=everything", "hyperparameter remat: one of"),
    ],
)
def test_every_lm_experiment_refuses_a_model_it_cannot_build(name: str, override: str, message: str) -> None:
    """One rule for all decoder-only LMs: a config error naming the hyperparameter, not a crash mid-build."""
    with pytest.raises(ConfigError, match=message):
        hparams.apply_overrides(registry.get(name)(), [override], None).validate()


def test_dna_fixes_pyglove_hyper_values() -> None:
    space = hparams.hyper_space(SearchableReverse())
    assert list(space.keys()) == ["learning_rate", "num_layers"]
    dna = pg.DNA([0.01, 2])
    exp = hparams.apply_overrides(SearchableReverse(), dna_json=pg.to_json_str(dna))
    assert exp.learning_rate == pytest.approx(0.01) and exp.num_layers == 3
    # --set can fix them too; otherwise they must be fixed.
    exp = hparams.apply_overrides(SearchableReverse(), ["learning_rate=0.2", "num_layers=1"])
    assert (exp.learning_rate, exp.num_layers) == (0.2, 1)
    with pytest.raises(ConfigError, match="search spaces"):
        hparams.apply_overrides(SearchableReverse())
    with pytest.raises(ConfigError, match="malformed --dna_json"):
        hparams.apply_overrides(SearchableReverse(), dna_json=pg.to_json_str(pg.DNA([0.01, 7])))


def test_registry_names_dotted_paths_and_list() -> None:
    assert registry.get("reverse_digits") is ReverseDigits
    dotted = registry.get("tests.trainer.test_hparams.SearchableReverse")  # imported on demand
    assert dotted.__name__ == "SearchableReverse" and issubclass(dotted, ReverseDigits)
    with pytest.raises(ConfigError, match="unknown experiment"):
        registry.get("nope")
    with pytest.raises(ConfigError, match="not a BaseExperiment"):
        registry.get("pax_trainer.hparams.coerce")
    out = subprocess.run(
        [sys.executable, "-m", "pax_trainer", "--list"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "lm_tiny\t" in out and "reverse_digits\t" in out


def test_weighted_scalars_are_weighted_means() -> None:
    a, b = WeightedScalar(1.0, 1.0), WeightedScalar(4.0, 3.0)
    assert merge(a, b).value == pytest.approx(13 / 4) and merge(a, b).weight == 4.0
    acc = Accumulator()
    acc.add({"loss": WeightedScalar(np.float32(2.0), np.float32(2.0))})
    acc.add({"loss": WeightedScalar(np.float32(5.0), np.float32(1.0))})
    assert acc.compute() == {"loss": pytest.approx(3.0)}


def test_describe_search_space_lists_each_decision_point() -> None:
    doc = json.loads(hparams.describe_search_space(SearchableReverse()))
    assert doc == {
        "parameters": [
            {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"},
            {"name": "num_layers", "type": "discrete", "values": ["1", "2", "3"]},
        ]
    }
    # each described value fixes the hyper value through --set, as a sweep trial does
    exp = hparams.apply_overrides(SearchableReverse(), ["learning_rate=0.003", "num_layers=2"])
    assert (exp.learning_rate, exp.num_layers) == (0.003, 2)


class _ManyChoices(ReverseDigits):
    model_dim = pg.oneof([f"choice-{i}" for i in range(1000)])


class _ReverseLog(ReverseDigits):
    learning_rate = pg.floatv(1e-4, 1e-1, scale="rlog")


@pytest.mark.parametrize(
    ("exp", "message"),
    [
        (ReverseDigits(), "declares no search space"),
        (_ManyChoices(), "more than the 4096"),
        (_ReverseLog(), "scale 'rlog' cannot be swept"),
    ],
)
def test_describe_search_space_refusals(exp: ReverseDigits, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hparams.describe_search_space(exp)


def test_describe_search_space_cli(tmp_path: Path) -> None:
    result_file = tmp_path / "termination-log"
    env = {**os.environ, "PAX_RESULT_FILE": str(result_file)}

    def describe(exp: str) -> subprocess.CompletedProcess[str]:
        argv = ["-m", "pax_trainer", f"--exp={exp}", f"--job_log_dir={tmp_path}", "--describe_search_space"]
        return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=100)

    proc = describe("reverse_digits_search")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(result_file.read_text())
    assert json.loads(proc.stdout)["parameters"][0]["name"] == "learning_rate"
    proc = describe("reverse_digits")
    assert proc.returncode == 2 and "declares no search space" in proc.stderr
    assert "declares no search space" in json.loads(result_file.read_text())["message"]


def test_a_split_without_examples_is_a_config_error() -> None:
    """repeat() and shuffle() of nothing never yield a batch: a crash (retried) without this check."""
    empty = grain.MapDataset.source([])
    with pytest.raises(ConfigError, match="the train split has no examples"):
        data.TrainInput(empty, seed=0, global_batch=2)
    with pytest.raises(ConfigError, match="an eval or decode split has no examples"):
        next(data.fixed_batches(empty, 2, 1))
