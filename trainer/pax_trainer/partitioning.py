"""Device mesh (data x fsdp x tensor) from the experiment, and shardings for batches and state."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pax_trainer.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over these; the tensor axis holds the same rows


def make_mesh(data: int, fsdp: int, tensor: int = 1) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices in jax.devices() order (tensor innermost, so tensor
    groups are neighbouring devices); -1 in data or fsdp fills in the remaining factor."""
    if tensor <= 0 or jax.device_count() % tensor:
        raise ConfigError(f"mesh tensor={tensor} does not divide {jax.device_count()} devices")
    n = jax.device_count() // tensor
    if data == -1 and fsdp > 0 and n % fsdp == 0:
        data = n // fsdp
    elif fsdp == -1 and data > 0 and n % data == 0:
        fsdp = n // data
    if data <= 0 or fsdp <= 0 or data * fsdp != n:
        raise ConfigError(
            f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not fit {jax.device_count()} devices"
        )
    return Mesh(np.asarray(jax.devices()).reshape(data, fsdp, tensor), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data and fsdp axes (replicated over tensor)."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Same value on every device."""
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh, abstract: Any) -> Any:
    """FSDP: shard each array's largest dimension divisible by the fsdp size; tensor: shard the largest
    remaining dimension of each matrix (ndim >= 2) divisible by the tensor size; replicate the rest.

    A shape rule, not Megatron's column/row pairing: XLA's SPMD partitioner inserts the collectives, so
    any placement computes the same function; this one only bounds memory per device.
    """
    fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]

    def rule(x: jax.ShapeDtypeStruct) -> NamedSharding:
        spec: list[str | None] = [None] * x.ndim
        by_size = sorted(range(x.ndim), key=lambda d: -x.shape[d])
        if fsdp > 1:
            for dim in by_size:
                if x.shape[dim] % fsdp == 0:
                    spec[dim] = "fsdp"
                    break
        if tensor > 1 and x.ndim >= 2:
            for dim in by_size:
                if spec[dim] is None and x.shape[dim] % tensor == 0:
                    spec[dim] = "tensor"
                    break
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(rule, abstract)
