"""Every PaxJob of deploy/samples (a PaxSweep's template too) gets past the trainer's first check: the
experiment's batch_size is divisible by the job's device count (pax_trainer.executor refuses it with exit 2
otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pax_cluster.procs import DEPLOY
from pax_operator.spec import PaxJobSpec, Topology
from pax_operator.sweep.spec import PaxSweepSpec

SAMPLES = sorted((DEPLOY / "samples").glob("pax*.yaml"))


def devices(topology: Topology) -> int:
    """jax.device_count() of the whole job: one device per CPU host (the pods set no XLA_FLAGS), one per
    GPU, one per TPU chip."""
    if topology.tpu is not None:
        return topology.tpu.chips_per_slice * topology.tpu.slices
    if topology.gpu is not None:
        return topology.gpu.hosts * topology.gpu.gpus_per_host
    assert topology.cpu is not None
    return topology.cpu.hosts


def batch_sizes(spec: PaxJobSpec, swept: list[str]) -> list[int]:
    """The batch sizes the job can run with: a sweep parameter's values, else the override, else the
    experiment class's default."""
    from pax_trainer import experiments, registry  # noqa: F401  (importing experiments registers them)

    if swept:
        return [int(v) for v in swept]
    if "batch_size" in spec.overrides:
        return [int(spec.overrides["batch_size"])]
    default = registry.get(spec.experiment).batch_size
    assert isinstance(default, int), f"{spec.experiment}: batch_size is a search space, not an int"
    return [default]


def cases() -> Iterator[object]:
    for path in SAMPLES:
        for body in yaml.safe_load_all(path.read_text()):
            if body.get("kind") == "PaxJob":
                spec, swept = PaxJobSpec.model_validate(body["spec"]), []
            elif body.get("kind") == "PaxSweep":
                sweep = PaxSweepSpec.model_validate(body["spec"])
                spec = sweep.template
                swept = [v for p in sweep.parameters if p.name == "batch_size" for v in p.values]
            else:
                continue
            yield pytest.param(path, spec, swept, id=path.name)


def test_there_are_samples() -> None:
    assert len(list(cases())) >= 7


@pytest.mark.parametrize(("path", "spec", "swept"), list(cases()))
def test_batch_size_divides_device_count(path: Path, spec: PaxJobSpec, swept: list[str]) -> None:
    n = devices(spec.topology)
    bad = [b for b in batch_sizes(spec, swept) if b % n]
    assert bad == [], f"{path.name}: batch_size {bad} is not divisible by {n} devices ({spec.experiment})"
