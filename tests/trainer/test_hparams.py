"""Overrides, PyGlove DNA, registry and WeightedScalars: in-process unit tests."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyglove as pg
import pytest
from pax_trainer import hparams, registry
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
    ],
)
def test_bad_overrides(sets: list[str], json_text: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        hparams.apply_overrides(ReverseDigits(), sets, json_text)


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
