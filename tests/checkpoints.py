"""The trainer's checkpoints read back in tests: the flattened train state as numpy, compared bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def checkpoint_state(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """The flattened train state of one checkpoint dir, as numpy (jax and Orbax imported on use)."""
    import jax
    import orbax.checkpoint as ocp

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(checkpoint_dir / "state").item_metadata.tree
        target = {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype, sharding=device) for k, v in meta.items()}
        restored = ckptr.restore(checkpoint_dir / "state", target)
    return {k: np.asarray(v) for k, v in restored.items()}


def assert_bit_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """Same names, and every array equal bit for bit."""
    assert sorted(a) == sorted(b)
    diff = [k for k in a if a[k].tobytes() != b[k].tobytes() or a[k].dtype != b[k].dtype]
    assert not diff, f"{len(diff)} arrays differ, e.g. {diff[:5]}"
