"""Train / eval / decode programs: pure jitted functions over an nnx.split state (paxml's programs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from pax_trainer import partitioning
from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.data import FixedBatch, HostBatch, to_global
from pax_trainer.errors import ConfigError
from pax_trainer.metrics import Accumulator, WeightedScalars, to_host

TrainState = dict[str, Any]  # {"step": int32[], "params": pure dict, "opt_state": optax state}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(exp: BaseExperiment) -> Any:
    """The experiment's compute dtype (mixed precision policy); ConfigError naming the field if unknown."""
    name = exp.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ConfigError(
            f"invalid value {name!r} for hyperparameter compute_dtype (expected {'|'.join(COMPUTE_DTYPES)})"
        )
    return COMPUTE_DTYPES[name]


def cast_params(params: Any, dtype: Any) -> Any:
    """Mixed precision: floating params as `dtype` for the forward/backward pass (identity for float32).

    The fp32 master copy and the optimizer state stay in the train state; gradients flow back through the
    cast, so they arrive in fp32 and the update is applied in fp32.
    """
    if dtype == jnp.float32:
        return params
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


class TrainProgram:
    """Builds the initial state and the jitted, donating train step."""

    def __init__(self, exp: BaseExperiment, mesh: Mesh) -> None:
        self.exp, self.mesh = exp, mesh
        self.dtype = compute_dtype(exp)
        self.tx = exp.optimizer()
        abstract_model = nnx.eval_shape(lambda: exp.model(nnx.Rngs(0)))
        self.graphdef, _ = nnx.split(abstract_model, nnx.Param)
        self.abstract_state = jax.eval_shape(self._init)
        self.state_sharding = partitioning.state_sharding(mesh, self.abstract_state)
        self.batch_sharding = partitioning.batch_sharding(mesh)
        self.step_fn = jax.jit(
            self._step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, partitioning.replicated(mesh)),
            donate_argnums=0,
        )

    def _init(self) -> TrainState:
        model = self.exp.model(nnx.Rngs(self.exp.seed))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params)}

    def init_state(self) -> TrainState:
        """Fresh state from the experiment seed, created sharded (same values on any mesh)."""
        return jax.jit(self._init, out_shardings=self.state_sharding)()

    def abstract_with_sharding(self) -> TrainState:
        """ShapeDtypeStructs carrying the target shardings (restore targets)."""
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            self.abstract_state,
            self.state_sharding,
        )

    def _step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, WeightedScalars]:
        def loss_fn(params: Any) -> tuple[jax.Array, WeightedScalars]:
            return self.exp.loss(self.merge(params), batch)

        (_, scalars), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, scalars

    def merge(self, params: Any) -> nnx.Module:
        """The model over `params` cast to the compute dtype (jit-traced)."""
        return nnx.merge(self.graphdef, cast_params(params, self.dtype))

    def global_batch(self, batch: HostBatch) -> dict[str, jax.Array]:
        """Host rows -> global jax.Array batch."""
        return to_global(batch, self.batch_sharding)


class EvalProgram:
    """Jitted forward pass; metrics accumulated Σwv/Σw over a split's batches."""

    def __init__(self, train: TrainProgram) -> None:
        self.train = train
        exp = train.exp
        self.fn = jax.jit(
            lambda params, batch: exp.loss(train.merge(params), batch)[1],
            out_shardings=partitioning.replicated(train.mesh),
        )

    def run(self, params: Any, batches: Iterable[FixedBatch]) -> dict[str, float]:
        """Metrics over all batches (padding rows have zero weight: exact means over the real examples)."""
        acc = Accumulator()
        for batch in batches:
            acc.add(self.fn(params, self.train.global_batch(batch.rows)))
        return acc.compute()


class DecodeProgram:
    """Jitted generation; records and metrics assembled on the host."""

    def __init__(self, train: TrainProgram) -> None:
        self.train = train
        exp = train.exp
        self.fn = jax.jit(
            lambda params, batch, rng: exp.decode(train.merge(params), batch, rng),
            out_shardings=partitioning.replicated(train.mesh),
        )

    def run(
        self, params: Any, batches: Iterable[FixedBatch], step: int
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """(records, metrics) for all batches' real rows (padding dropped before `decode_records`); sampling
        RNG derived from (seed, step, batch index)."""
        acc = Accumulator()
        records: list[dict[str, Any]] = []
        base = jax.random.fold_in(jax.random.key(self.train.exp.seed), step)
        for i, batch in enumerate(batches):
            out = self.fn(params, self.train.global_batch(batch.rows), jax.random.fold_in(base, i))
            rows, outputs = batch.rows, to_host(out)
            if batch.num_real < len(next(iter(rows.values()))):  # the padded last batch: real rows only
                real = slice(0, batch.num_real)
                rows, outputs = ({k: v[real] for k, v in tree.items()} for tree in (rows, outputs))
            recs, scalars = self.train.exp.decode_records(rows, outputs)
            records.extend(recs)
            acc.add(scalars)
        return records, acc.compute()
