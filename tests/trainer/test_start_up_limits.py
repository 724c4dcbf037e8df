"""Start-up checks that misjudged a permanent mistake as a crash or storage error (retried), or a resume's
healthy state as a permanent one, and a /metrics server that kept a thread per silent client."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from pax_cluster.procs import free_port
from pax_contract import (
    CHECKPOINTS_DIR,
    ENV_METRICS_PORT,
    ENV_POD_IP,
    METRIC_STEP,
    METRIC_TOTAL_STEPS,
    ExitCode,
    checkpoint_dir_name,
)
from pax_trainer import hparams, ownership, paths, progress, registry, storage
from pax_trainer.errors import ConfigError
from pax_trainer.experiments.reverse_digits import ReverseDigits

from tests.trainer.conftest import Trainer, run_trainer, trainer_args

pytestmark = pytest.mark.timeout(300)

DEEP = 100_000  # far past the JSON parser's recursion limit


# --- init_from_checkpoint on resume ---------------------------------------------------------------
def test_a_resume_does_not_need_the_init_from_checkpoint_source(tmp_path: Path) -> None:
    """The source was resolved on every attempt: once it was moved, every resume of the fine-tuned job
    failed with exit 2 (for good), though it resumes from its own checkpoints and never reads the source."""
    source, job = tmp_path / "source", tmp_path / "ft"
    common = {"num_train_steps": 2, "save_interval_steps": 2, "eval_interval_steps": 0}
    first = run_trainer(trainer_args("reverse_digits", **common), source, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    args = trainer_args("reverse_digits", **common, init_from_checkpoint=source)
    tuned = run_trainer(args, job, tmp_path)
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert (job / CHECKPOINTS_DIR / checkpoint_dir_name(2)).is_dir()

    source.rename(tmp_path / "source.gone")
    resumed = run_trainer(args, job, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint at step 2" in resumed.stderr
    # A job with no checkpoint of its own still needs the source: refused at once, as before.
    fresh = run_trainer(args, tmp_path / "fresh", tmp_path)
    assert fresh.returncode == ExitCode.CONFIG_ERROR, fresh.stderr[-3000:]
    assert "no committed checkpoint found" in fresh.stderr


# --- /metrics -------------------------------------------------------------------------------------
def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def _connection_threads() -> int:
    return sum("process_request_thread" in t.name for t in threading.enumerate())


def test_metrics_server_bounds_silent_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """500 half-sent requests kept 502 threads, for good (prometheus_client's server never times out)."""
    port = free_port()
    monkeypatch.setenv(ENV_METRICS_PORT, str(port))
    monkeypatch.delenv(ENV_POD_IP, raising=False)
    p = progress.Progress(7)
    p.serve()
    clients: list[socket.socket] = []
    try:
        p.update(3)
        assert f"{METRIC_TOTAL_STEPS} 7.0" in _scrape(port)
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more
            clients.append(s)
        time.sleep(1)
        assert 0 < _connection_threads() <= progress.MAX_CONNECTIONS
        # Silent clients are dropped after the connection timeout; then scrapes are answered again.
        deadline = time.monotonic() + progress.CONNECTION_TIMEOUT_S + 10
        while _connection_threads() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _connection_threads() == 0
        assert clients[0].recv(100) == b""  # closed by the server
        assert f"{METRIC_STEP} 3.0" in _scrape(port)
    finally:
        for s in clients:
            s.close()
        p.close()
    assert not any(t.name == "pax_metrics" for t in threading.enumerate())


# --- deadlines from the environment ---------------------------------------------------------------
@pytest.mark.parametrize(
    "env, read",
    [
        (storage.ENV_TIMEOUT_S, storage.timeout_s),
        (storage.ENV_BULK_TIMEOUT_S, lambda: storage.timeout_s(bulk=True)),
        (ownership.ENV_STALE_S, ownership.stale_after_s),
    ],
)
def test_deadlines_beyond_a_week_are_config_errors(monkeypatch: pytest.MonkeyPatch, env: str, read) -> None:
    """Near threading.TIMEOUT_MAX the watchdog Timer died of OverflowError (no deadline at all), and the
    owner's release raised: a finished run exited 1."""
    monkeypatch.setenv(env, str(storage.MAX_SECONDS))
    assert read() == storage.MAX_SECONDS
    monkeypatch.setenv(env, str(10**12))
    with pytest.raises(ConfigError, match=f"{env}=1000000000000 is out of range: at most 604800 seconds"):
        read()


# --- hyperparameters and experiments --------------------------------------------------------------
class _WithTuple(ReverseDigits):
    shape: tuple = (1, 2)


def test_deeply_nested_overrides_are_config_errors() -> None:
    """RecursionError: exit 1, a crash the operator retries."""
    with pytest.raises(ConfigError, match="malformed --overrides_json: nested too deeply"):
        hparams.apply_overrides(ReverseDigits(), None, '{"seed": ' + "[" * DEEP + "]" * DEEP + "}")
    with pytest.raises(ConfigError, match="invalid value for hyperparameter shape: nested too deeply"):
        hparams.apply_overrides(_WithTuple(), ["shape=" + "[" * DEEP + "]" * DEEP])
    assert hparams.apply_overrides(_WithTuple(), ["shape=[3, 4]"]).shape == (3, 4)
    # Nested just short of the limit: still one short line.
    with pytest.raises(ConfigError) as err:
        hparams.apply_overrides(ReverseDigits(), None, json.dumps({"seed": [[[[[[0]]]]]] * 100}))
    assert len(str(err.value)) < 300


def test_experiments_that_fail_to_import_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--exp .x.Y` raised TypeError and a module raising on import crashed the run (exit 1)."""
    with pytest.raises(ConfigError, match=r"importing \.x failed: TypeError: the 'package' argument"):
        registry.get(".x.Y")
    (tmp_path / "pax_broken_exp.py").write_text("raise RuntimeError('no dataset here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="importing pax_broken_exp failed: RuntimeError: no dataset here"):
        registry.get("pax_broken_exp.Exp")


# --- job_log_dir ----------------------------------------------------------------------------------
def test_a_file_named_checkpoints_is_a_config_error(tmp_path: Path) -> None:
    """NotADirectoryError later: a storage error (exit 3), retried while nothing could ever change."""
    (tmp_path / CHECKPOINTS_DIR).write_text("x")
    with pytest.raises(ConfigError, match="holds a file named checkpoints, not a directory"):
        paths.check_job_log_dir(str(tmp_path))
    paths.check_job_log_dir(str(tmp_path / "fresh"))


CASES = {
    "checkpoints_file": ({}, "holds a file named checkpoints"),
    "relative_exp": ({}, "importing .x failed: TypeError"),
    "huge_bulk_deadline": (
        {storage.ENV_BULK_TIMEOUT_S: str(10**10)},
        "PAX_STORAGE_BULK_TIMEOUT_S=10000000000",
    ),
}


def test_the_trainer_exits_2_with_one_line(tmp_path: Path) -> None:
    """The same mistakes through the CLI: exit 2 (never retried), one error line, the result file."""
    started = {}
    for name, (env, _) in CASES.items():
        job = tmp_path / name
        if name == "checkpoints_file":
            job.mkdir()
            (job / CHECKPOINTS_DIR).write_text("x")
        exp = ".x.Y" if name == "relative_exp" else "reverse_digits"
        started[name] = Trainer(["--exp", exp], str(job), tmp_path, env=env)
    for name, t in started.items():
        try:
            run = t.finish(timeout=120)
        finally:
            t.kill()
        assert run.returncode == ExitCode.CONFIG_ERROR, (name, run.stderr[-2000:])
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("pax_trainer: error: "), (name, run.stderr)
        assert CASES[name][1] in lines[0], lines[0]
        assert json.loads(t.result_file.read_text())["exit_reason"] == "config_error"
