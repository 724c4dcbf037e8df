"""Orbax checkpoints under job_log_dir/checkpoints/checkpoint_%08d, plus fine-tuning from another job.

A checkpoint holds two items: `state` (the flattened train state: step, params, opt_state) and `data`
(the grain iterator state as JSON). Only real directories holding the commit marker are restored, and a
restore never deletes or rewrites one:

- its arrays' names, shapes or dtypes differ from the experiment's: ConfigError (exit 2) naming the first
  mismatched array and both shapes; nothing touched;
- it cannot be read (a storage error, including on the byte-for-byte re-read that follows a failed restore):
  StorageError (exit 3, the failure budget retries); nothing touched;
- every byte reads back and restoring it fails twice with an error that says the data is bad (a file cut
  short or missing, a checksum, a manifest, JSON or msgpack that does not decode): provably corrupt, moved
  aside (see below), and the previous checkpoint is tried;
- any other failure (out of memory, a format this Orbax does not know, a bug): raised as it is (exit 1, the
  failure budget retries); nothing touched.

If the job has no committed checkpoint left and corrupt ones were moved aside (now or by an earlier
attempt), a train run refuses to start from step 0 (ConfigError, exit 2: retrying cannot help, and
training from scratch would bury the run's progress); the message names where they are.

A train run first moves aside, never removes, what cannot be a checkpoint of its own: uncommitted
directories (a save cut short), Orbax tmp directories and symlinks named like checkpoints. Moved aside means
renamed, bytes kept, into job_log_dir/checkpoints_set_aside/<name>.<reason>.<UTC time>, with a warning.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
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

from pax_trainer import paths, storage
from pax_trainer.base_experiment import parse_init_rules
from pax_trainer.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

FlatState = dict[str, Any]
SET_ASIDE_DIR = "checkpoints_set_aside"  # sibling of checkpoints/: Orbax never scans or cleans it
# Zero-padded to CHECKPOINT_STEP_DIGITS; steps from 10**CHECKPOINT_STEP_DIGITS on have more digits.
_STEP_RE = re.compile(rf"^{CHECKPOINT_PREFIX}_(\d{{{CHECKPOINT_STEP_DIGITS},}})$")
_ORBAX_TMP = ".orbax-checkpoint-tmp"
_READ_CHUNK = 8 << 20
# Restore verdicts, agreed across hosts by taking the largest.
_OK, _CORRUPT, _FAILED, _UNREADABLE, _MISMATCH = 0, 1, 2, 3, 4
_CORRUPT_REASON = "corrupt"  # in the names of checkpoints moved aside as corrupt
# What a restore raises when the bytes read back but are not a checkpoint: tensorstore's statuses for data
# that is cut short (OUT_OF_RANGE), missing from a committed checkpoint (NOT_FOUND) or does not decode
# (DATA_LOSS; or INVALID_ARGUMENT, which has no prefix: matched by its words), and JSON, UTF-8 or msgpack
# that does not parse.
_CORRUPT_STATUS_CODES = ("DATA_LOSS", "OUT_OF_RANGE", "NOT_FOUND")
_CORRUPT_WORDS = ("Error decoding", "Data corruption detected", "checksum verification failed")
_CORRUPT_PACKAGES = frozenset({"msgpack"})


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


def _is_link(path: epath.Path) -> bool:
    """A symlink (local paths only: object stores have none)."""
    return not paths.is_gcs(str(path)) and os.path.islink(path)


def committed_steps(directory: epath.Path) -> list[int]:
    """Steps of real checkpoint dirs that hold the commit marker, ascending (symlinks are not ours)."""
    with storage.call(f"listing {directory}"):
        if not directory.exists():
            return []
        steps = []
        for child in directory.iterdir():
            match = _STEP_RE.match(child.name)
            if match and not _is_link(child) and (child / COMMIT_MARKER).exists():
                steps.append(int(match.group(1)))
    return sorted(steps)


def first_mismatch(stored: dict[str, tuple[tuple[int, ...], str]], expected: FlatState) -> str | None:
    """The first array (params first, by name) whose presence, shape or dtype differs, in words; or None."""
    for name in sorted(set(stored) | set(expected), key=lambda n: (not n.startswith("params."), n)):
        if name not in stored:
            return f"{name} {_shape(expected[name])} is in the experiment but not in the checkpoint"
        shape, dtype = stored[name]
        if name not in expected:
            return f"{name} {shape} {dtype} is in the checkpoint but not in the experiment"
        want = (tuple(expected[name].shape), str(np.dtype(expected[name].dtype)))
        if (shape, dtype) != want:
            return f"{name} is {shape} {dtype} in the checkpoint but {want[0]} {want[1]} in the experiment"
    return None


def _shape(value: Any) -> str:
    return f"{tuple(value.shape)} {np.dtype(value.dtype)}"


def _agree(verdict: int) -> int:
    """The worst verdict of all hosts (each may see storage differently)."""
    if jax.process_count() == 1:
        return verdict
    return int(np.max(multihost_utils.process_allgather(np.int32(verdict))))


class Checkpointer:
    """Async Orbax CheckpointManager with Pax naming, keep-N, and a restore that never loses a checkpoint."""

    def __init__(self, job_log_dir: str, max_to_keep: int, async_save: bool, read_only: bool = False) -> None:
        self.directory = paths.join(job_log_dir, CHECKPOINTS_DIR)
        self.set_aside_directory = paths.join(job_log_dir, SET_ASIDE_DIR)
        self._read_only = read_only
        # Orbax would delete tmp/uncommitted dirs itself: the trainer moves them aside instead (above).
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else max_to_keep,
            step_prefix=CHECKPOINT_PREFIX,
            step_format_fixed_length=CHECKPOINT_STEP_DIGITS,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=False,
            read_only=read_only,
            create=not read_only,
        )
        self._options = options
        if not read_only:
            if jax.process_index() == 0:
                self._set_aside_uncommitted()
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("pax_checkpoints_set_aside")
        self.manager = self._open_manager()
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

    def _open_manager(self) -> ocp.CheckpointManager:
        with storage.call(f"opening checkpoints at {self.directory}"):
            return ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=self._options)

    # --- restore -----------------------------------------------------------------------------------------
    def restore_latest(self, abstract: FlatState) -> tuple[int, FlatState, dict[str, Any]] | None:
        """Restore the newest committed checkpoint; corrupt ones are moved aside; None if the job has none.

        ConfigError if none is left but corrupt ones were moved aside: starting afresh would bury them."""
        for step in reversed(committed_steps(self.directory)):
            restored = self._restore(step, abstract, with_data=True)
            if restored is None:
                continue
            self._committed = self._requested = step
            return step, dict(restored["state"]), dict(restored["data"])
        corrupt = self._set_aside_as_corrupt()
        if corrupt:
            shown = ", ".join(corrupt[:3]) + (f" and {len(corrupt) - 3} more" if len(corrupt) > 3 else "")
            raise ConfigError(
                f"every committed checkpoint under {self.directory} was corrupt and is moved aside, bytes"
                f" kept, to {self.set_aside_directory} ({shown}): refusing to train from step 0 over them"
                " (check them; to start afresh, move them out of that directory, or use another job_log_dir)"
            )
        return None

    def _set_aside_as_corrupt(self) -> list[str]:
        """Names of the checkpoints moved aside as corrupt, by this run or an earlier one, in name order."""
        with storage.call(f"listing {self.set_aside_directory}"):
            if not self.set_aside_directory.exists():
                return []
            names = [child.name for child in self.set_aside_directory.iterdir()]
        return sorted(
            name
            for name in names
            if _STEP_RE.match(name.split(".")[0]) and name.split(".")[1:2] == [_CORRUPT_REASON]
        )

    def restore_step(self, step: int, abstract: FlatState) -> FlatState:
        """The train state of committed checkpoint `step` (eval/decode jobs: nothing is ever moved)."""
        restored = self._restore(step, abstract, with_data=False)
        if restored is None:
            raise StorageError(f"checkpoint {self.directory / checkpoint_dir_name(step)} cannot be restored")
        return dict(restored["state"])

    def _restore(self, step: int, abstract: FlatState, with_data: bool) -> Any:
        """Restored items, or None when the checkpoint is provably corrupt (then moved aside by a trainer)."""
        step_dir = self.directory / checkpoint_dir_name(step)
        verdict, reason, restored = _OK, "", None
        stored = self._stored_arrays(step_dir)
        mismatch = first_mismatch(stored, abstract) if stored is not None else None
        if mismatch:
            verdict, reason = _MISMATCH, mismatch
        else:
            items = {"state": ocp.args.StandardRestore(abstract)}
            if with_data:
                items["data"] = ocp.args.JsonRestore()
            verdict, reason, restored = self._read(step, step_dir, ocp.args.Composite(**items))
        agreed = _agree(verdict)
        if agreed == _FAILED:
            if isinstance(restored, BaseException):
                raise restored
            raise RuntimeError(f"restoring checkpoint {step_dir} failed on another host")
        if agreed == _MISMATCH:
            raise ConfigError(
                f"checkpoint {step_dir} does not fit this experiment: {reason or 'mismatch on another host'}"
                " (train with the settings that wrote it, or use another job_log_dir)"
            )
        if agreed == _UNREADABLE:
            raise StorageError(f"cannot read checkpoint {step_dir}: {reason or 'unreadable on another host'}")
        if agreed == _CORRUPT:
            log.warning("checkpoint %s is corrupt: %s", step_dir, reason or "on another host")
            if self._read_only:
                raise StorageError(f"checkpoint {step_dir} is corrupt: {reason or 'on another host'}")
            if jax.process_index() == 0:
                self._set_aside(step_dir, _CORRUPT_REASON)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices(f"pax_checkpoint_set_aside_{step}")
            self.manager.close()
            self.manager = self._open_manager()
            return None
        return restored

    def _read(self, step: int, step_dir: epath.Path, args: ocp.args.Composite) -> tuple[int, str, Any]:
        """(verdict, reason, restored items or, if _FAILED, the error) of reading one checkpoint on this host.

        Corrupt only if it fails twice, the second time with an error that says the data is bad, while its
        bytes read back: a storage error on the way (tensorstore raises those as ValueError), running out of
        memory or a format this Orbax cannot read must not move a good checkpoint aside and resume from an
        older one."""
        failure: Exception | None = None
        for _ in range(2):
            try:
                with storage.call(f"restoring {step_dir}", bulk=True):
                    return _OK, "", self.manager.restore(step, args=args)
            except StorageError as err:
                return _UNREADABLE, str(err), None
            except Exception as err:
                if _out_of_memory(err):  # nothing to do with the bytes, and trying again would not help
                    return _FAILED, storage.one_line(err), err
                unreadable = _first_unreadable(step_dir)
                if unreadable:
                    return _UNREADABLE, unreadable, None
                if failure is None:
                    log.warning("restoring %s failed, trying once more: %s", step_dir, storage.one_line(err))
                failure = err
        assert failure is not None
        if not _is_corruption(failure):
            failure.add_note(f"restoring {step_dir}: not a sign of corrupt data, so it is left in place")
            return _FAILED, storage.one_line(failure), failure
        return _CORRUPT, storage.one_line(failure), None

    def _stored_arrays(self, step_dir: epath.Path) -> dict[str, tuple[tuple[int, ...], str]] | None:
        """name -> (shape, dtype) from the checkpoint's metadata; None if it does not read back."""
        try:
            with storage.call(f"reading metadata of {step_dir}"):
                tree = ocp.StandardCheckpointHandler().metadata(step_dir / "state")
        except StorageError:
            return None
        except Exception as err:
            log.info("no array metadata in %s: %s", step_dir, storage.one_line(err))
            return None
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict):
            return None
        return {
            name: (tuple(int(d) for d in meta.shape), str(np.dtype(meta.dtype)))
            for name, meta in tree.items()
            if hasattr(meta, "shape") and hasattr(meta, "dtype")
        }

    # --- moving aside --------------------------------------------------------------------------------------
    def _set_aside_uncommitted(self) -> None:
        """Move aside checkpoint-named entries that are not committed real directories (process 0)."""
        with storage.call(f"listing {self.directory}"):
            children = list(self.directory.iterdir()) if self.directory.exists() else []
        for child in children:
            name = child.name
            if not name.startswith(f"{CHECKPOINT_PREFIX}_"):
                continue
            if _is_link(child):
                self._set_aside(child, "symlink")
                continue
            is_step = bool(_STEP_RE.match(name))
            with storage.call(f"checking {child}"):
                committed = is_step and (child / COMMIT_MARKER).exists()
            if not committed and (is_step or _ORBAX_TMP in name):
                self._set_aside(child, "uncommitted")

    def _set_aside(self, child: epath.Path, reason: str) -> None:
        """Rename `child` into checkpoints_set_aside/ (bytes kept), logged."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.set_aside_directory / f"{child.name}.{reason}.{stamp}"
        log.warning("moving %s checkpoint entry %s aside to %s (bytes kept)", reason, child, target)
        with storage.call(f"moving {child} aside", bulk=True):
            if paths.is_gcs(str(child)):
                _copy_then_delete(child, target)  # object stores have no rename
            else:
                self.set_aside_directory.mkdir(parents=True, exist_ok=True)
                os.rename(child, target)  # a symlink itself, never its target

    # --- save ----------------------------------------------------------------------------------------------
    def save(self, step: int, state: FlatState, data_state: dict[str, Any]) -> None:
        """Start an async save of `step` (returns once the state is copied to host memory)."""
        self._finish_pending()
        self._note_progress()
        if jax.process_count() == 1:
            # One device->host copy of the whole (small, fully addressable) state as numpy: Orbax then
            # saves plain host arrays, which costs about half the CPU of its per-array jax.Array path.
            state = jax.device_get(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        previous = self._requested
        if self._writer is None:
            with storage.call(f"saving checkpoint {step}", bulk=True):
                self._save_after(previous, step, args)
        else:
            # The host copy is a private snapshot, so even starting the Orbax save (its blocking part:
            # directory creation, metadata, launching the commit thread) can leave the train loop.
            self._pending = self._writer.submit(self._save_after, previous, step, args)
        self._requested = step

    def _save_after(self, previous: int | None, step: int, args: ocp.args.Composite) -> None:
        """Orbax's save of `step`, which first waits for the save of `previous` to commit: waited for here, so
        that commit is known at once (`known_committed_step`), even if this save then stalls."""
        self.manager.wait_until_finished()
        if previous is not None:
            self._committed = previous if self._committed is None else max(self._committed, previous)
        self.manager.save(step, args=args, force=True)

    def _finish_pending(self) -> None:
        """Wait for the writer thread to hand the last save to Orbax; re-raise its error if it failed."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            with storage.call("starting a checkpoint save", bulk=True):
                pending.result()

    def _note_progress(self) -> None:
        if self._pending is not None and not self._pending.done():
            return
        self._finish_pending()
        if self._requested is not None and not self.manager.is_saving_in_progress():
            with storage.call("committing a checkpoint", bulk=True):
                self.manager.check_for_errors()  # a failed background commit is not a committed step
            self._committed = self._requested

    def settle(self) -> int | None:
        """The newest committed step, once the save in flight (if any) has committed or failed.

        For the preemption watchdog's thread, called while the train loop starts no save (see preemption)."""
        with storage.call("committing a checkpoint", bulk=True):
            pending = self._pending
            while (pending is not None and not pending.done()) or self.manager.is_saving_in_progress():
                time.sleep(0.05)
            requested = self._requested
            if requested is not None and requested != self._committed:
                marker = self.directory / checkpoint_dir_name(requested) / COMMIT_MARKER
                return requested if marker.exists() else self._committed
        return self._committed

    def known_committed_step(self) -> int | None:
        """The newest step known committed, calling no storage (may lag `last_committed_step`): for the
        grace period's end, when storage may be what stalls."""
        return self._committed

    @property
    def last_committed_step(self) -> int | None:
        """Newest step known to be committed (async saves count once finished)."""
        self._note_progress()
        return self._committed

    def wait(self) -> None:
        """Block until pending saves are committed."""
        self._finish_pending()
        with storage.call("committing checkpoints", bulk=True):
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


def _files(directory: epath.Path) -> list[epath.Path]:
    """Every file under `directory`, depth first in name order (etils has no recursive glob for gs://)."""
    found, pending = [], [directory]
    while pending:
        for child in sorted(pending.pop().iterdir()):
            (pending if child.is_dir() else found).append(child)
    return found


def _copy_then_delete(source: epath.Path, target: epath.Path) -> None:
    """Move an object-store "directory": copy every object, and only then delete the originals."""
    files = _files(source)
    for f in files:
        f.copy(target / str(f.relative_to(source)))
    for f in files:
        f.unlink()


def _out_of_memory(err: BaseException) -> bool:
    """Host (MemoryError) or device (XLA's RESOURCE_EXHAUSTED) memory ran out."""
    return isinstance(err, MemoryError) or str(err).startswith("RESOURCE_EXHAUSTED")


def _is_corruption(err: BaseException) -> bool:
    """Whether a restore's error (or one it was raised from) says the checkpoint's data is bad."""
    current: BaseException | None = err
    while current is not None:
        text = str(current)
        if isinstance(current, json.JSONDecodeError | UnicodeDecodeError):
            return True
        if any((cls.__module__ or "").split(".")[0] in _CORRUPT_PACKAGES for cls in type(current).__mro__):
            return True
        if isinstance(current, ValueError) and (
            text.startswith(tuple(f"{code}:" for code in _CORRUPT_STATUS_CODES))
            or any(words in text for words in _CORRUPT_WORDS)
        ):
            return True
        current = current.__cause__
    return False


def _first_unreadable(step_dir: epath.Path) -> str:
    """'' if every file of the checkpoint reads back byte for byte, else the first failure on one line."""
    current = step_dir
    with storage.call(f"re-reading {step_dir}", bulk=True):
        try:
            for current in _files(step_dir):
                with current.open("rb") as f:
                    while f.read(_READ_CHUNK):
                        pass
        except Exception as err:  # any failure to read bytes back is a storage problem, not corruption
            return f"{current}: {storage.one_line(err)}"
    return ""


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
def resolve_init_checkpoint(path: str) -> epath.Path:
    """A checkpoint_%08d dir, a checkpoints/ dir or a job_log_dir -> the checkpoint's `state` dir.

    ConfigError if there is none; StorageError (exit 3: retried) if storage fails or misses its deadline."""
    base = epath.Path(path)
    with storage.call(f"init_from_checkpoint {path}"):
        if (base / "state").exists():
            return base / "state"
    for directory in (base, base / CHECKPOINTS_DIR):
        steps = committed_steps(directory)
        if steps:
            return directory / checkpoint_dir_name(steps[-1]) / "state"
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
    with storage.call(f"reading metadata of {state_dir}"):
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
    try:
        with storage.call(f"restoring {state_dir}", bulk=True):
            source = checkpointer.restore(state_dir, source_abstract)
    finally:
        checkpointer.close()
    num_params = sum(name.startswith(prefix) for name in target)
    log.info("fine-tuning: %d of %d params initialised from %s", len(mapping), num_params, state_dir)
    return {
        name: jax.device_put(source[src].astype(target[name].dtype), target[name].sharding)
        for name, src in mapping.items()
    }
