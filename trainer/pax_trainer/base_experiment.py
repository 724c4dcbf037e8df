"""BaseExperiment: hyperparameters as class attributes, plus model/data/loss/decode hooks (paxml style)."""

from __future__ import annotations

import re
import typing
from typing import Any, ClassVar

import grain
import jax
import numpy as np
import optax
from flax import nnx

from pax_trainer.errors import ConfigError
from pax_trainer.metrics import WeightedScalars

Batch = dict[str, jax.Array]


class BaseExperiment:
    """An experiment: annotated public class attributes are hyperparameters (override with --set NAME=VALUE).

    A hyperparameter may hold a PyGlove hyper value (``pg.floatv``, ``pg.oneof``): it is then fixed by
    ``--dna_json`` (search space = ``pg.Dict`` of those attributes in sorted-name order) or by ``--set``.
    """

    description: ClassVar[str] = ""

    seed: int = 1234
    num_train_steps: int = 200
    batch_size: int = 16  # global batch, split over hosts and devices
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    save_interval_steps: int = 50
    max_to_keep: int = 3
    async_checkpointing: bool = True
    eval_interval_steps: int = 50  # 0: no eval during training
    eval_num_batches: int = 4  # per eval split
    decode_interval_steps: int = 0  # 0: no decode during training
    decode_num_batches: int = 1
    log_interval_steps: int = 10
    sync_interval_steps: int = 10  # block on a value this often (multi-process CPU deadlocks otherwise)
    mesh_data: int = -1  # device mesh axes: data x fsdp = number of devices; -1 = the rest
    mesh_fsdp: int = 1
    mesh_tensor: int = 1  # tensor-parallel axis (innermost: devices of one host); batch not split over it
    compute_dtype: str = "float32"  # mixed precision: float32 | bfloat16 compute; params/optimizer stay fp32
    init_from_checkpoint: str = ""  # fine-tune: a checkpoints/ dir or one checkpoint_%08d dir of another job
    init_rules: str = ""  # fine-tune name mapping "regex=>template;..." (target name -> source name)
    eval_wait_timeout_s: float = 600.0  # --mode eval: give up when no new checkpoint shows up for this long

    # --- hooks ------------------------------------------------------------------------------------------
    def model(self, rngs: nnx.Rngs) -> nnx.Module:
        """Build the Flax NNX model."""
        raise NotImplementedError

    def train_dataset(self) -> grain.MapDataset:
        """Unbatched training examples (dicts of numpy arrays); shuffled/repeated/batched by the trainer."""
        raise NotImplementedError

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        """Unbatched examples per eval split (summaries go to summaries/eval_<split>)."""
        return {}

    def decode_dataset(self) -> grain.MapDataset | None:
        """Unbatched prompts for decoding, or None."""
        return None

    def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, WeightedScalars]:
        """Scalar loss to minimise and weighted metrics (jit-traced)."""
        raise NotImplementedError

    def decode(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        """Generations for a batch (jit-traced)."""
        raise NotImplementedError

    def decode_records(
        self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], WeightedScalars]:
        """Host side: JSON-able records (one per example) and decode metrics."""
        raise NotImplementedError

    def optimizer(self) -> optax.GradientTransformation:
        """Default: AdamW with linear warmup then cosine decay."""
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            self.learning_rate,
            max(1, self.warmup_steps),
            max(self.num_train_steps, self.warmup_steps + 1),
        )
        return optax.adamw(schedule, weight_decay=self.weight_decay)

    def validate(self) -> None:
        """ConfigError naming the first hyperparameter out of range; extend with super().validate()."""
        checks = {
            "num_train_steps": self.num_train_steps >= 0,
            "batch_size": self.batch_size > 0,
            "save_interval_steps": self.save_interval_steps > 0,
            "max_to_keep": self.max_to_keep > 0,
            "learning_rate": self.learning_rate >= 0,
            "sync_interval_steps": 0 < self.sync_interval_steps <= 10,
            "log_interval_steps": self.log_interval_steps > 0,
            "warmup_steps": self.warmup_steps >= 0,
            "weight_decay": self.weight_decay >= 0,
            "eval_interval_steps": self.eval_interval_steps >= 0,  # 0: never
            "eval_num_batches": self.eval_num_batches > 0,  # 0 evaluated nothing: no eval metrics at all
            "decode_interval_steps": self.decode_interval_steps >= 0,  # 0: never
            "decode_num_batches": self.decode_num_batches > 0,
            "eval_wait_timeout_s": self.eval_wait_timeout_s >= 0,
        }
        for name, ok in checks.items():
            require(self, name, ok)
        for name in _STEP_COUNTS:  # warmup_steps=10**18 overflowed in the jitted schedule: exit 1, retried
            require(
                self, name, getattr(self, name) <= _INT32_MAX, f"at most {_INT32_MAX} (int32 step counter)"
            )
        for name in self.hyperparameters():  # seed, data_seed, ...: numpy and grain take unsigned seeds
            if name == "seed" or name.endswith("_seed"):
                seed = getattr(self, name)
                require(self, name, isinstance(seed, int) and seed >= 0)
        parse_init_rules(self.init_rules)

    # --- hyperparameter introspection --------------------------------------------------------------------
    @classmethod
    def hyperparameters(cls) -> dict[str, Any]:
        """Name -> annotated type of every hyperparameter."""
        hints = typing.get_type_hints(cls)
        return {
            name: typ
            for name, typ in hints.items()
            if not name.startswith("_") and typing.get_origin(typ) is not ClassVar and typ is not ClassVar
        }

    def hparams_dict(self) -> dict[str, Any]:
        """Current hyperparameter values (for logs and summaries)."""
        return {name: getattr(self, name) for name in sorted(self.hyperparameters())}


_INT32_MAX = 2**31 - 1
_STEP_COUNTS = (
    "num_train_steps",
    "warmup_steps",
    "save_interval_steps",
    "eval_interval_steps",
    "decode_interval_steps",
    "log_interval_steps",
)


def require(exp: BaseExperiment, name: str, ok: bool, why: str = "") -> None:
    """ConfigError `invalid value V for hyperparameter NAME[: why]` unless `ok`."""
    if not ok:
        detail = f": {why}" if why else ""
        raise ConfigError(f"invalid value {getattr(exp, name)!r} for hyperparameter {name}{detail}")


_GROUP_REFERENCE = re.compile(r"\\(?:(\d+)|g<(\w+)>)")  # \1, \g<1>, \g<name> in a template


def parse_init_rules(text: str) -> list[tuple[re.Pattern[str], str]]:
    """init_rules 'regex=>template;...' -> [(compiled, template)]; ConfigError if malformed."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        regex, sep, template = part.partition("=>")
        if not sep:
            raise ConfigError(f"malformed init rule {part!r}: expected REGEX=>TEMPLATE")
        try:
            pattern = re.compile(regex.strip())
        except re.error as err:
            raise ConfigError(f"malformed init rule {part!r}: {err}") from None
        for number, name in _GROUP_REFERENCE.findall(template):
            group = number or name
            if (int(group) > pattern.groups) if group.isdigit() else (group not in pattern.groupindex):
                raise ConfigError(f"malformed init rule {part!r}: the regex has no group {group}")
        rules.append((pattern, template.strip()))
    return rules
