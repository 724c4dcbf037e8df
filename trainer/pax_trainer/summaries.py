"""TensorBoard event files (tensorboardX, no TensorFlow) under summaries/train and summaries/eval_<split>.

For gs:// job dirs the events are written to a local staging dir and copied up on every flush, so the
bucket always holds complete files. After a resume, each run's first event file starts with a purge step:
TensorBoard drops the points an interrupted attempt wrote from there on, which this one writes again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from pax_contract import SUMMARIES_DIR, TrainerEnv
from tensorboardX import SummaryWriter

from pax_trainer import paths


class SummaryWriters:
    """One tensorboardX writer per run name ('train', 'eval_test', ...); a no-op unless `enabled`."""

    def __init__(self, job_log_dir: str, enabled: bool) -> None:
        self.enabled = enabled
        self.remote = paths.is_gcs(job_log_dir)
        self.root = f"{job_log_dir.rstrip('/')}/{SUMMARIES_DIR}"
        self._staging = Path(tempfile.mkdtemp(prefix="pax-summaries-")) if self.remote and enabled else None
        self._writers: dict[str, SummaryWriter] = {}
        self._resumed_at: int | None = None

    def _writer(self, run: str) -> SummaryWriter:
        if run not in self._writers:
            logdir = str(self._staging / run) if self._staging else str(Path(self.root) / run)
            self._writers[run] = SummaryWriter(logdir=logdir, flush_secs=30, purge_step=self._purge_step(run))
        return self._writers[run]

    def resumed_at(self, step: int) -> None:
        """The run resumed from the checkpoint at `step`: writers opened from now on purge what an earlier
        attempt wrote past it (call before the first write)."""
        self._resumed_at = step

    def _purge_step(self, run: str) -> int | None:
        """The train run's points up to `step` stay (its later ones are trained again); eval and decode at
        `step` itself are run again after a resume (their output was cut or not known to be complete)."""
        if self._resumed_at is None:
            return None
        return self._resumed_at + 1 if run == "train" else self._resumed_at

    def scalars(self, run: str, step: int, values: dict[str, float]) -> None:
        """Write scalars (tag = metric name) for `run` at `step`."""
        if not self.enabled:
            return
        writer = self._writer(run)
        for name, value in values.items():
            writer.add_scalar(name, value, global_step=step)

    def text(self, run: str, step: int, tag: str, value: str) -> None:
        """Write a text summary (e.g. hyperparameters, sample decodes)."""
        if self.enabled:
            self._writer(run).add_text(tag, value, global_step=step)

    def flush(self) -> None:
        """Flush event files (and upload them for gs:// job dirs)."""
        for writer in self._writers.values():
            writer.flush()
        self._upload()

    def _upload(self) -> None:
        if self._staging:
            fs, _, _ = fsspec.get_fs_token_paths(self.root)
            for local in self._staging.rglob("*"):
                if local.is_file():
                    fs.put_file(str(local), f"{self.root}/{local.relative_to(self._staging)}")

    def close(self) -> None:
        """Flush, upload and close everything."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        self._upload()
        if self._staging:
            shutil.rmtree(self._staging, ignore_errors=True)


def hparams_text(hparams: dict[str, Any]) -> str:
    """Markdown table of hyperparameters for the train run."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
    return f"| name | value |\n|---|---|\n{rows}"


HPARAM_VALUE_MAX_CHARS = 80  # per value in the start-up line (init_rules, a long path)


def changed_hparams(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Hyperparameters whose value differs from the experiment's default: name -> (value, default)."""
    return {
        name: (value, defaults.get(name)) for name, value in values.items() if defaults.get(name) != value
    }


def startup_line(
    exp_name: str, mode: str, job_log_dir: str, env: TrainerEnv, changed: dict[str, tuple[Any, Any]]
) -> str:
    """The trainer's first log line: which job and attempt this host is, what it runs where, and which
    hyperparameters differ from the experiment's defaults (a misspelled override fails before this)."""

    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= HPARAM_VALUE_MAX_CHARS else text[: HPARAM_VALUE_MAX_CHARS - 3] + "..."

    job = f"paxjob {env.job_namespace or '?'}/{env.job_name}" if env.job_name else "run"
    diff = ", ".join(
        f"{name}={short(value)} (default {short(default)})" for name, (value, default) in changed.items()
    )
    return (
        f"{job} attempt {env.restart_attempt}, process {env.process_id} of {env.num_processes}: {mode} "
        f"{exp_name} in {job_log_dir}; hparams "
        + (f"changed from the defaults: {diff}" if diff else "all the experiment's defaults")
    )
