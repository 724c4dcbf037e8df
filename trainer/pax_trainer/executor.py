"""The loops: train (save-if-needed -> step -> eval / decode every N), eval the newest checkpoint, decode."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grain
import jax
import numpy as np
from jax.experimental import multihost_utils
from pax_contract import DECODER_OUT_DIR, TrainerResult

from pax_trainer import checkpoints, data, partitioning, paths, storage
from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.checkpoints import Checkpointer, flatten, unflatten
from pax_trainer.errors import ConfigError, Preempted, StorageError
from pax_trainer.metrics import to_host
from pax_trainer.ownership import Ownership
from pax_trainer.preemption import PreemptionWatcher
from pax_trainer.programs import DecodeProgram, EvalProgram, TrainProgram, TrainState
from pax_trainer.progress import Progress
from pax_trainer.summaries import SummaryWriters, hparams_text

log = logging.getLogger(__name__)

# Eval / decode jobs: how many times a checkpoint deleted while being read (the trainer's max_to_keep) is
# followed by the newest one then.
GONE_RETRIES = 3


@dataclass(frozen=True)
class Splits:
    """The datasets one run reads, each built once (`check_splits`): an experiment's dataset methods may be
    costly (reading an index, listing files), and were called again at every eval and decode."""

    train: grain.MapDataset | None = None
    eval: Mapping[str, grain.MapDataset] = field(default_factory=dict)
    decode: grain.MapDataset | None = None


class _Cut(Exception):
    """SIGTERM in the eval or decode of a step not saved yet (one process): cut it short, save the step."""


class Executor:
    """Runs one mode of one experiment in one job_log_dir."""

    def __init__(
        self,
        exp: BaseExperiment,
        job_log_dir: str,
        status: TrainerResult,
        watcher: PreemptionWatcher,
        splits: Splits,
    ) -> None:
        self.exp, self.job_log_dir, self.status, self.watcher = exp, job_log_dir, status, watcher
        self.splits = splits
        self.is_chief = jax.process_index() == 0
        self.mesh = partitioning.make_mesh(exp.mesh_data, exp.mesh_fsdp, exp.mesh_tensor)
        if exp.batch_size % jax.device_count():
            raise ConfigError(f"batch_size {exp.batch_size} is not divisible by {jax.device_count()} devices")
        self.program = TrainProgram(exp, self.mesh)
        check_state_fits(self.program.abstract_state, jax.process_count(), data.host_memory_bytes())
        self.summaries = SummaryWriters(job_log_dir, enabled=self.is_chief)
        self.progress = Progress(exp.num_train_steps)
        self.sync_times: list[tuple[int, float]] = []  # (step, time) after each blocking sync (benchmarks)

    # --- state ---------------------------------------------------------------------------------------------
    def _restore_or_init(
        self, ckpt: Checkpointer, train_input: data.TrainInput | None
    ) -> tuple[TrainState, bool]:
        abstract = flatten(self.program.abstract_with_sharding())
        restored = ckpt.restore_latest(abstract)
        if restored:
            step, flat, data_state = restored
            if train_input is not None:
                train_input.set_state(data_state)
            log.info("resumed from checkpoint at step %d", step)
            self.status.last_checkpoint_step = step
            return unflatten(self.program.abstract_state, flat), True
        state = self.program.init_state()
        if self.exp.init_from_checkpoint:
            flat = flatten(state)
            flat.update(
                checkpoints.load_init_params(
                    self.exp.init_from_checkpoint, self.exp.init_rules, abstract, self.mesh
                )
            )
            state = unflatten(self.program.abstract_state, flat)
        return state, False

    # --- train ---------------------------------------------------------------------------------------------
    def train(self) -> None:
        """Train to num_train_steps, resuming from the newest usable checkpoint; process 0 owns the dir."""
        owner = Ownership(self.job_log_dir) if self.is_chief else None
        if owner:
            owner.claim()
        try:
            self._train()
        except BaseException:
            self.watcher.take_over()  # a failure is reported as such, even if SIGTERM comes during clean-up
            raise
        finally:
            if owner:
                owner.release()

    def _train(self) -> None:
        exp = self.exp
        ckpt = Checkpointer(self.job_log_dir, exp.max_to_keep, exp.async_checkpointing)
        self.watcher.watch_saves(ckpt.settle, ckpt.known_committed_step)
        if self.splits.train is None:
            raise ValueError("Splits.train is not built: check_splits(exp, 'train') builds it")
        train_input = data.TrainInput(self.splits.train, exp.seed, exp.batch_size)
        state, resumed = self._restore_or_init(ckpt, train_input)
        step = int(to_host(state["step"]))
        if resumed:
            self.summaries.resumed_at(step)
        self.status.final_step = step
        evaluator = EvalProgram(self.program) if exp.eval_interval_steps > 0 else None
        decoder = DecodeProgram(self.program) if exp.decode_interval_steps > 0 else None
        self.progress.serve()
        self.progress.update(step, checkpoint_step=ckpt.last_committed_step)
        self.summaries.text("train", step, "hparams", hparams_text(exp.hparams_dict()))
        if not resumed:
            ckpt.save(step, flatten(state), train_input.get_state())
        # Resumed: a preemption or crash after the save at `step` cut its eval / decode. At or past the last
        # step (num_train_steps 0, or lowered below the checkpoint's step): the run's only eval.
        if (resumed and step > 0) or step >= exp.num_train_steps:
            self._evaluate_and_decode(evaluator, decoder, state, step)
        log.info(
            "training %s from step %d to %d on %d devices",
            type(exp).__name__,
            step,
            exp.num_train_steps,
            jax.device_count(),
        )
        scalars = None
        first = step
        try:
            while step < exp.num_train_steps:
                state, scalars = self.program.step_fn(state, self.program.global_batch(next(train_input)))
                step += 1
                self.watcher.stepped()
                self.status.final_step = step
                at_sync = step % exp.sync_interval_steps == 0 or step == exp.num_train_steps
                if step == first + 1 or at_sync or step % exp.log_interval_steps == 0:
                    self._log_train(step, scalars, ckpt, start=step == first + 1)
                last = step == exp.num_train_steps  # saved, evaluated and ended below anyway
                if not last and (jax.process_count() == 1 or at_sync) and self.watcher.should_stop():
                    self._stop(ckpt, step, state, train_input)
                saved = step % exp.save_interval_steps == 0 or last
                if saved:
                    self._save(ckpt, step, state, train_input)
                try:  # one process, `step` not saved: SIGTERM cuts the eval / decode and saves `step`
                    cut = not saved and jax.process_count() == 1
                    self._evaluate_and_decode(evaluator, decoder, state, step, cut)
                except _Cut:
                    self._stop(ckpt, step, state, train_input)
            self.watcher.take_over()  # trained: the final save's commit is waited for, then exit 0
            ckpt.wait()
            self.status.last_checkpoint_step = ckpt.last_committed_step
            self.progress.update(step, checkpoint_step=ckpt.last_committed_step)
        finally:
            try:
                ckpt.close()
            finally:
                # Also when close() raised (a failed commit): the newest step known committed, asking storage
                # nothing more. The value from the last log line may predate commits the writer saw since.
                self.status.last_checkpoint_step = ckpt.known_committed_step()
                self._summaries_io(self.summaries.close)
                self.progress.close()
        self.status.message = f"trained to step {step}"

    def _stop(self, ckpt: Checkpointer, step: int, state: TrainState, train_input: data.TrainInput) -> None:
        """SIGTERM: save `step`, wait for its commit, exit 42 (raises Preempted)."""
        self.watcher.take_over()
        self._save(ckpt, step, state, train_input)
        ckpt.wait()
        self.status.last_checkpoint_step = step
        raise Preempted(step)

    def _evaluate_and_decode(
        self,
        evaluator: EvalProgram | None,
        decoder: DecodeProgram | None,
        state: TrainState,
        step: int,
        cut: bool = False,
    ) -> None:
        """The evaluation and decoding due at `step` (every interval, and at or past the last step); `cut`:
        raise _Cut at the first batch after SIGTERM."""
        last = step >= self.exp.num_train_steps
        if evaluator and (step % self.exp.eval_interval_steps == 0 or last):
            self._eval(evaluator, state["params"], step, cut)
        if decoder and (step % self.exp.decode_interval_steps == 0 or last):
            self._decode(decoder, state["params"], step, cut)

    def _batches(self, dataset: Any, num_batches: int, cut: bool) -> Iterator[data.FixedBatch]:
        """The eval / decode batches of `dataset`; `cut`: _Cut instead of the next batch after SIGTERM."""
        for batch in data.fixed_batches(dataset, self.exp.batch_size, num_batches):
            if cut and self.watcher.requested:
                raise _Cut
            yield batch

    def _save(self, ckpt: Checkpointer, step: int, state: TrainState, train_input: data.TrainInput) -> None:
        ckpt.save(step, flatten(state), train_input.get_state())
        self.watcher.saved()
        self._summaries_io(self.summaries.flush)

    def _summaries_io(self, action: Callable[[], None]) -> None:
        """Flush or close the summary writers (an upload for gs://) under the storage deadline."""
        with storage.call(f"writing summaries under {self.job_log_dir}"):
            action()

    def _log_train(self, step: int, scalars: Any, ckpt: Checkpointer, start: bool) -> None:
        values = {name: float(v.value) for name, v in to_host(dict(scalars)).items()}
        self.sync_times.append((step, time.perf_counter()))
        if start:
            self.progress.start(step)
        self.progress.update(step, values.get("loss"), ckpt.last_committed_step)
        self.status.last_checkpoint_step = ckpt.last_committed_step
        if step % self.exp.log_interval_steps == 0 or step == self.exp.num_train_steps:
            extra = {"steps_per_sec": self.progress.rate} if self.progress.rate else {}
            self.summaries.scalars("train", step, values | extra)
            self.status.metrics.update({f"train/{k}": v for k, v in values.items()})

    def _eval(self, evaluator: EvalProgram, params: Any, step: int, cut: bool = False) -> dict[str, float]:
        results: dict[str, float] = {}
        for split, dataset in self.splits.eval.items():
            metrics = evaluator.run(params, self._batches(dataset, self.exp.eval_num_batches, cut))
            self.summaries.scalars(f"eval_{split}", step, metrics)
            log.info("eval %s at step %d: %s", split, step, _fmt(metrics))
            results.update({f"eval_{split}/{k}": v for k, v in metrics.items()})
        self._summaries_io(self.summaries.flush)
        self.status.metrics.update(results)
        self.progress.evaluated(step, results)
        return results

    def _decode(self, decoder: DecodeProgram, params: Any, step: int, cut: bool = False) -> dict[str, float]:
        dataset = self.splits.decode
        if dataset is None:
            return {}
        records, metrics = decoder.run(params, self._batches(dataset, self.exp.decode_num_batches, cut), step)
        if self.is_chief:
            out = paths.join(self.job_log_dir, DECODER_OUT_DIR)
            with storage.call(f"writing decodes to {out}"):
                out.mkdir(parents=True, exist_ok=True)
                (out / f"decode_{step:08d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            if records:
                self.summaries.text("decode", step, "sample", json.dumps(records[0]))
        self.summaries.scalars("decode", step, metrics)
        log.info("decode at step %d: %d records, %s", step, len(records), _fmt(metrics))
        self.status.metrics.update({f"decode/{k}": v for k, v in metrics.items()})
        return metrics

    # --- eval / decode jobs ----------------------------------------------------------------------------
    def _restore_step(self, ckpt: Checkpointer, step: int) -> TrainState:
        flat = ckpt.restore_step(step, flatten(self.program.abstract_with_sharding()))
        return unflatten(self.program.abstract_state, flat)

    def _restore_newest(self, ckpt: Checkpointer, step: int, after: int = -1) -> tuple[int, TrainState]:
        """(step, its state) of committed checkpoint `step`; if the trainer's max_to_keep deleted it while it
        was being read (another step is the newest on a fresh listing), of the newest past `after` then
        (GONE_RETRIES times at most)."""
        retries = GONE_RETRIES
        while True:
            try:
                return step, self._restore_step(ckpt, step)
            except StorageError:
                newest, _ = self._newest_committed(ckpt)
                if newest == step or newest <= after or not retries:
                    raise
                log.info("checkpoint %d was deleted while being read: restoring the newest, %d", step, newest)
                step, retries = newest, retries - 1

    def _newest_committed(self, ckpt: Checkpointer, deadline: float = math.inf) -> tuple[int, bool]:
        """(newest committed step, past `deadline`) as process 0 sees them, on every host: each host's own
        clock could end one host's wait a poll before another's, leaving that one in a collective alone."""
        steps = checkpoints.committed_steps(ckpt.directory)
        view = np.array([steps[-1] if steps else -1, time.monotonic() > deadline], dtype=np.int32)
        if jax.process_count() > 1:
            view = multihost_utils.broadcast_one_to_all(view)
        return int(view[0]), bool(view[1])

    def evaluate(self, poll_s: float = 2.0) -> None:
        """Evaluate the newest committed checkpoint whenever there is a newer one (those committed while one
        is evaluated are skipped), until num_train_steps is evaluated or none comes in time."""
        ckpt = Checkpointer(self.job_log_dir, self.exp.max_to_keep, async_save=False, read_only=True)
        evaluator = EvalProgram(self.program)
        last, deadline = -1, time.monotonic() + self.exp.eval_wait_timeout_s
        try:
            while True:
                newest, waited_too_long = self._newest_committed(ckpt, deadline)
                if newest > last:
                    newest, state = self._restore_newest(ckpt, newest, after=last)
                    self._eval(evaluator, state["params"], newest)
                    last, self.status.final_step = newest, newest
                    self.status.last_checkpoint_step = newest
                    deadline = time.monotonic() + self.exp.eval_wait_timeout_s
                    if newest >= self.exp.num_train_steps:
                        break
                elif waited_too_long:
                    log.warning("no new checkpoint for %.0f s: stopping", self.exp.eval_wait_timeout_s)
                    break
                else:
                    time.sleep(poll_s)
                if self.watcher.should_stop():
                    raise Preempted(last if last >= 0 else None, saved=False)  # an eval job saves nothing
        finally:
            ckpt.close()
            self._summaries_io(self.summaries.close)
        self.status.message = f"evaluated up to step {last}" if last >= 0 else "no checkpoint to evaluate"

    def decode(self) -> None:
        """Decode with the newest committed checkpoint into decoder_out/decode_<step>.jsonl."""
        ckpt = Checkpointer(self.job_log_dir, self.exp.max_to_keep, async_save=False, read_only=True)
        try:
            newest, _ = self._newest_committed(ckpt)
            if newest < 0:
                raise ConfigError(f"--mode decode: no committed checkpoint under {ckpt.directory}")
            newest, state = self._restore_newest(ckpt, newest)
            self._decode(DecodeProgram(self.program), state["params"], newest)
            self.status.final_step = self.status.last_checkpoint_step = newest
        finally:
            ckpt.close()
            self._summaries_io(self.summaries.close)
        self.status.message = f"decoded with checkpoint at step {newest}"


def check_state_fits(abstract_state: Any, num_processes: int, memory: int) -> None:
    """ConfigError if this host's share of the train state (params and optimizer state; a single process
    also copies it whole to host memory for each save) is more than `memory` bytes: creating it would
    fail or hang the trainer until the kernel killed it, on every attempt."""
    total = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract_state))
    per_host = total // max(1, num_processes)
    if per_host > memory:
        raise ConfigError(
            f"the model does not fit: its train state (params, optimizer state) is {total / 2**30:.3g} GiB,"
            f" {per_host / 2**30:.3g} GiB per host over {num_processes} hosts, and this"
            f" host has {memory / 2**30:.3g} GiB (check the model size hyperparameters)"
        )


def check_splits(exp: BaseExperiment, mode: str) -> Splits:
    """The splits `mode` will read, built once, and checked at start-up, before anything is written or the
    gang forms: they have examples, the short eval / decode ones can be padded (else a config error at the
    first eval, mid-run), and one global batch of each fits in this host's memory (reads their lengths and
    first examples)."""
    memory = data.host_memory_bytes()
    train, evals, decode = None, {}, None
    if mode == "train":
        train = exp.train_dataset()
        data.require_train_examples(train)
        data.check_batch_fits(train, exp.batch_size, "the train split", memory)
    if mode == "eval" or (mode == "train" and exp.eval_interval_steps > 0):
        evals = exp.eval_datasets()
        for split, dataset in evals.items():
            data.check_fixed_split(dataset, f"eval split {split!r}", exp.batch_size, exp.eval_num_batches)
            data.check_batch_fits(dataset, exp.batch_size, f"eval split {split!r}", memory)
    if mode == "decode" or (mode == "train" and exp.decode_interval_steps > 0):
        decode = exp.decode_dataset()
        if decode is not None:
            data.check_fixed_split(decode, "the decode split", exp.batch_size, exp.decode_num_batches)
            data.check_batch_fits(decode, exp.batch_size, "the decode split", memory)
    return Splits(train, evals, decode)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
