"""Device mesh (data x fsdp) from the experiment, and shardings for batches and state."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pax_trainer.errors import ConfigError

AXES = ("data", "fsdp")


def make_mesh(data: int, fsdp: int) -> Mesh:
    """A (data, fsdp) mesh over all devices in jax.devices() order; -1 fills in the remaining factor."""
    n = jax.device_count()
    if data == -1 and fsdp > 0 and n % fsdp == 0:
        data = n // fsdp
    elif fsdp == -1 and data > 0 and n % data == 0:
        fsdp = n // data
    if data <= 0 or fsdp <= 0 or data * fsdp != n:
        raise ConfigError(f"mesh data={data} x fsdp={fsdp} does not fit {n} devices")
    return Mesh(np.asarray(jax.devices()).reshape(data, fsdp), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, PartitionSpec(AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh, abstract: Any) -> Any:
    """FSDP: shard each array's largest dimension divisible by the fsdp size; replicate the rest."""
    fsdp = mesh.shape["fsdp"]

    def rule(x: jax.ShapeDtypeStruct) -> NamedSharding:
        if fsdp > 1 and x.ndim >= 1:
            for dim in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
                if x.shape[dim] % fsdp == 0:
                    spec: list[str | None] = [None] * x.ndim
                    spec[dim] = "fsdp"
                    return NamedSharding(mesh, PartitionSpec(*spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(rule, abstract)
