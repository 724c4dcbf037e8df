"""Orbax checkpoints under job_log_dir/checkpoints/checkpoint_%08d, plus fine-tuning from another job.

A checkpoint holds two items: `state` (the flattened train state: step, params, opt_state) and `data`
(the grain iterator state as JSON). Only directories holding the commit marker are candidates for
restore; a newest checkpoint that fails to restore is skipped with a warning (and removed, so the step
can be saved again) in favour of the previous one.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import sys
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from pax_contract import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_STEP_DIGITS,
    CHECKPOINTS_DIR,
    COMMIT_MARKER,
    checkpoint_dir_name,
)

from pax_trainer import paths
from pax_trainer.errors import ConfigError

log = logging.getLogger(__name__)

FlatState = dict[str, Any]
_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d{{{CHECKPOINT_STEP_DIGITS}}})$")


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flatten(tree: Any) -> FlatState:
    """A pytree as {'params.layers.0.attn.query.kernel': leaf, ...} (stable names for Orbax and rules)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def unflatten(template: Any, flat: FlatState) -> Any:
    """Inverse of flatten() given a tree with the same structure."""
    names = list(flatten(template))
    return jax.tree.unflatten(jax.tree.structure(template), [flat[name] for name in names])


def committed_steps(directory: epath.Path) -> list[int]:
    """Steps of checkpoint dirs that hold the commit marker, ascending."""
    if not directory.exists():
        return []
    steps = []
    for child in directory.iterdir():
        match = _STEP_RE.match(child.name)
        if match and (child / COMMIT_MARKER).exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


class Checkpointer:
    """Async Orbax CheckpointManager with Pax naming, keep-N, and skip-the-broken-newest restore."""

    def __init__(self, job_log_dir: str, max_to_keep: int, async_save: bool, read_only: bool = False) -> None:
        self.directory = paths.join(job_log_dir, CHECKPOINTS_DIR)
        # Readers (eval/decode jobs running beside the trainer) must not clean up its in-flight tmp dirs.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            step_prefix=CHECKPOINT_PREFIX,
            step_format_fixed_length=CHECKPOINT_STEP_DIGITS,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self._options = options
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=options)
        self._requested: int | None = None
        self._committed: int | None = None
        # Single process: saves start on a low-priority writer thread (see save()).
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future[None] | None = None
        self._switch_interval: float | None = None
        if async_save and not read_only and jax.process_count() == 1:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="pax_ckpt", initializer=_lower_thread_priority
            )
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, _SWITCH_INTERVAL_S))

    def restore_latest(self, abstract: FlatState) -> tuple[int, FlatState, dict[str, Any]] | None:
        """Restore the newest committed checkpoint that reads back; None if there is none."""
        skipped: list[int] = []
        result = None
        for step in reversed(committed_steps(self.directory)):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as err:
                log.warning(
                    "skipping checkpoint %s: cannot restore it (%s)",
                    checkpoint_dir_name(step),
                    _one_line(err),
                )
                skipped.append(step)
                continue
            result = (step, dict(restored["state"]), dict(restored["data"]))
            break
        newest = result[0] if result else -1
        self._drop_newer_than(newest)
        if result:
            self._committed = self._requested = newest
        return result

    def _drop_newer_than(self, step: int) -> None:
        """Remove broken or uncommitted checkpoint dirs newer than `step` so the steps can be saved again."""
        stale = []
        if self.directory.exists():
            for child in self.directory.iterdir():
                match = _STEP_RE.match(child.name)
                if match and int(match.group(1)) > step:
                    stale.append(child)
        if not stale:
            return
        if jax.process_index() == 0:
            for child in stale:
                log.warning("removing unusable checkpoint %s", child)
                child.rmtree(missing_ok=True)
        multihost_utils.sync_global_devices("pax_drop_stale_checkpoints")
        self.manager.close()
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"), options=self._options
        )

    def save(self, step: int, state: FlatState, data_state: dict[str, Any]) -> None:
        """Start an async save of `step` (returns once the state is copied to host memory)."""
        self._finish_pending()
        self._note_progress()
        if jax.process_count() == 1:
            # One device->host copy of the whole (small, fully addressable) state as numpy: Orbax then
            # saves plain host arrays, which costs about half the CPU of its per-array jax.Array path.
            state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        if self._writer is None:
            self.manager.save(step, args=args, force=True)
        else:
            # The host copy is a private snapshot, so even starting the Orbax save (its blocking part:
            # directory creation, metadata, launching the commit thread) can leave the train loop.
            self._pending = self._writer.submit(self.manager.save, step, args=args, force=True)
        self._requested = step

    def _finish_pending(self) -> None:
        """Wait for the writer thread to hand the last save to Orbax; re-raise its error if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _note_progress(self) -> None:
        if self._pending is not None and not self._pending.done():
            return
        self._finish_pending()
        if self._requested is not None and not self.manager.is_saving_in_progress():
            self._committed = self._requested

    @property
    def last_committed_step(self) -> int | None:
        """Newest step known to be committed (async saves count once finished)."""
        self._note_progress()
        return self._committed

    @property
    def last_requested_step(self) -> int | None:
        """Newest step saved or being saved."""
        return self._requested

    def wait(self) -> None:
        """Block until pending saves are committed."""
        self._finish_pending()
        self.manager.wait_until_finished()
        self._committed = self._requested

    def close(self) -> None:
        """Finish pending saves and release resources."""
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            if self._switch_interval is not None:
                sys.setswitchinterval(self._switch_interval)
                self._switch_interval = None
            self.manager.close()


_WRITER_NICE = 19
# While a trainer's Checkpointer is open, the GIL switch interval is this (Python's default: 5 ms), so the
# writer thread's Python (Orbax spends ~1 ms of Python per array) hands the GIL back to the train loop
# within 0.5 ms instead of stalling its step dispatch by up to 5 ms at a time.
_SWITCH_INTERVAL_S = 0.0005


def _lower_thread_priority() -> None:
    """Nice the calling thread (Linux: per thread) so checkpoint writes yield the CPU to training.

    Threads it starts (Orbax's commit thread) inherit the niceness.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _WRITER_NICE)
    except (AttributeError, OSError) as err:  # not Linux, or not permitted: run at normal priority
        log.debug("cannot lower the checkpoint writer's priority: %s", err)


# --- fine-tuning from another job's checkpoint -----------------------------------------------------------
def parse_init_rules(text: str) -> list[tuple[re.Pattern[str], str]]:
    """'regex=>template;...' -> [(compiled, template)]; ConfigError if malformed."""
    rules = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        regex, sep, template = part.partition("=>")
        if not sep:
            raise ConfigError(f"malformed init rule {part!r}: expected REGEX=>TEMPLATE")
        try:
            rules.append((re.compile(regex.strip()), template.strip()))
        except re.error as err:
            raise ConfigError(f"malformed init rule {part!r}: {err}") from None
    return rules


def resolve_init_checkpoint(path: str) -> epath.Path:
    """A checkpoint_%08d dir, a checkpoints/ dir or a job_log_dir -> the checkpoint's `state` dir."""
    base = epath.Path(path)
    try:
        if (base / "state").exists():
            return base / "state"
        for directory in (base, base / CHECKPOINTS_DIR):
            steps = committed_steps(directory)
            if steps:
                return directory / checkpoint_dir_name(steps[-1]) / "state"
    except OSError as err:
        raise ConfigError(f"init_from_checkpoint {path}: {_one_line(err)}") from None
    raise ConfigError(f"init_from_checkpoint {path}: no committed checkpoint found")


def load_init_params(
    path: str, rules_text: str, target: FlatState, mesh: Mesh, prefix: str = "params."
) -> dict[str, jax.Array]:
    """Values for target params (names without `prefix`) mapped from another job's checkpoint by rules.

    The first rule whose regex fully matches a target name gives the source name (re expand of the
    template); target params no rule matches keep their fresh initialisation. Default rule: same name.
    """
    rules = parse_init_rules(rules_text) or [(re.compile("(.*)"), r"\1")]
    state_dir = resolve_init_checkpoint(path)
    checkpointer = ocp.StandardCheckpointer()
    source_meta = checkpointer.metadata(state_dir).item_metadata.tree
    mapping: dict[str, str] = {}
    for name, abstract in target.items():
        if not name.startswith(prefix):
            continue
        short = name[len(prefix) :]
        for regex, template in rules:
            match = regex.fullmatch(short)
            if match:
                source = prefix + match.expand(template)
                if source not in source_meta:
                    raise ConfigError(
                        f"init rule maps {short} to {source[len(prefix) :]}, not in {state_dir}"
                    )
                if tuple(source_meta[source].shape) != tuple(abstract.shape):
                    raise ConfigError(
                        f"init rule maps {short} {abstract.shape} to {source} {source_meta[source].shape}"
                    )
                mapping[name] = source
                break
    replicated = NamedSharding(mesh, PartitionSpec())
    source_abstract = {
        name: jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=replicated)
        for name, meta in source_meta.items()
    }
    source = checkpointer.restore(state_dir, source_abstract)
    checkpointer.close()
    num_params = sum(name.startswith(prefix) for name in target)
    log.info("fine-tuning: %d of %d params initialised from %s", len(mapping), num_params, state_dir)
    return {
        name: jax.device_put(source[src].astype(target[name].dtype), target[name].sharding)
        for name, src in mapping.items()
    }


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]
