"""Issue 7 §1: a restore never loses a committed checkpoint; two jobs never share a job_log_dir.

Every case hashes the committed checkpoints (and, when one is moved aside, its new home) before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from pax_cluster.procs import free_port
from pax_contract import ENV_JOB_NAME, ENV_JOB_NAMESPACE, ExitCode, checkpoint_dir_name

from tests.trainer.conftest import (
    Run,
    committed,
    drop_commit_marker,
    gang_env,
    run_trainer,
    trainer_args,
    tree_digest,
    truncate_arrays,
)

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]

STEPS = 20
ARGS = trainer_args("lm_tiny", num_train_steps=STEPS, save_interval_steps=10, eval_interval_steps=0)
NEWEST = checkpoint_dir_name(STEPS)
PREVIOUS = checkpoint_dir_name(STEPS - 10)


def set_aside(job: Path) -> dict[str, Path]:
    """Original entry name -> its moved-aside path."""
    root = job / "checkpoints_set_aside"
    return {p.name.split(".")[0]: p for p in root.iterdir()} if root.is_dir() else {}


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("pax_trainer: error: ")]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lm_tiny trained STEPS steps: committed checkpoints at 0, 10, 20."""
    tmp = tmp_path_factory.mktemp("safety")
    run = run_trainer(ARGS, tmp / "job", tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp / "job"


@pytest.fixture
def job(tmp_path: Path, source: Path) -> Path:
    target = tmp_path / "job"
    shutil.copytree(source, target, symlinks=True)
    (target / "pax_owner.json").unlink(missing_ok=True)
    return target


def _refused_untouched(run: Run, job: Path, before: dict[str, dict[str, str]], code: int) -> str:
    assert run.returncode == code, run.stderr[-3000:]
    lines = error_lines(run)
    assert len(lines) == 1, run.stderr[-3000:]
    assert committed(job) == before, "a committed checkpoint changed"
    assert not set_aside(job), "nothing may be moved on a refused restore"
    assert "removing" not in run.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "shapes"),
    [
        (["--set", "model_dim=32"], ("(256, 64) float32", "(256, 32) float32")),
        (["--exp", "reverse_digits"], ("(256, 64) float32", "(11, 64) float32")),
    ],
    ids=["other_model_dim", "other_experiment"],
)
def test_mismatched_experiment_is_a_config_error_and_keeps_every_checkpoint(
    tmp_path: Path, job: Path, extra: list[str], shapes: tuple[str, str]
) -> None:
    """The reproduction: today this deletes all three checkpoints and retrains from step 0 with exit 0."""
    before = committed(job)
    assert sorted(before) == [checkpoint_dir_name(s) for s in (0, 10, STEPS)]
    run = run_trainer([*ARGS, *extra], job, tmp_path)
    line = _refused_untouched(run, job, before, ExitCode.CONFIG_ERROR)
    assert f"{NEWEST} does not fit this experiment: params.embed.embedding is {shapes[0]}" in line, line
    assert f"but {shapes[1]} in the experiment" in line, line
    assert run.result and run.result.exit_reason == "config_error"


def test_io_error_during_restore_is_a_storage_error_and_touches_nothing(tmp_path: Path, job: Path) -> None:
    """The newest checkpoint's array files answer EIO (symlinks to /proc/self/mem): exit 3, nothing moved."""
    arrays = job / "checkpoints" / NEWEST / "state" / "ocdbt.process_0" / "d"
    for f in arrays.iterdir():
        f.unlink()
        f.symlink_to("/proc/self/mem")
    before = committed(job)
    run = run_trainer(ARGS, job, tmp_path)
    line = _refused_untouched(run, job, before, ExitCode.STORAGE_ERROR)
    assert f"cannot read checkpoint {job / 'checkpoints' / NEWEST}" in line and "Errno 5" in line, line
    assert run.result and run.result.exit_reason == "storage_error"


@pytest.mark.parametrize(
    ("damage", "reason"), [(truncate_arrays, "corrupt"), (drop_commit_marker, "uncommitted")]
)
def test_corrupt_or_uncommitted_newest_is_moved_aside_with_its_bytes(
    tmp_path: Path, job: Path, damage, reason: str
) -> None:
    damage(job / "checkpoints" / NEWEST)
    damaged = tree_digest(job / "checkpoints" / NEWEST)
    before = {name: d for name, d in committed(job).items() if name != NEWEST}
    run = run_trainer(ARGS, job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from checkpoint at step {STEPS - 10}" in run.stderr
    moved = set_aside(job)
    assert list(moved) == [NEWEST] and f".{reason}." in moved[NEWEST].name, moved
    assert tree_digest(moved[NEWEST]) == damaged, "moved aside with every byte"
    after = committed(job)
    assert {name: after[name] for name in before} == before
    assert NEWEST in after  # the step was trained and saved again


def test_symlinked_entries_under_checkpoints_do_not_crash_and_are_not_followed(
    tmp_path: Path, job: Path, source: Path
) -> None:
    ckpts = job / "checkpoints"
    (ckpts / checkpoint_dir_name(30)).symlink_to(source / "checkpoints" / NEWEST)  # someone else's bytes
    (ckpts / checkpoint_dir_name(40)).symlink_to(tmp_path / "nowhere")  # dangling
    (ckpts / "latest").symlink_to(NEWEST)  # not named like a checkpoint: left alone
    before = committed(job)
    target_before = tree_digest(source / "checkpoints" / NEWEST)
    run = run_trainer([*ARGS, "--set", f"num_train_steps={STEPS + 10}"], job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from checkpoint at step {STEPS}" in run.stderr
    moved = set_aside(job)
    assert sorted(moved) == [checkpoint_dir_name(30), checkpoint_dir_name(40)]
    assert all(p.is_symlink() for p in moved.values())
    assert os.readlink(moved[checkpoint_dir_name(30)]) == str(source / "checkpoints" / NEWEST)
    assert tree_digest(source / "checkpoints" / NEWEST) == target_before
    assert (ckpts / "latest").is_symlink()
    after = committed(job)
    # max_to_keep=3: step 0 may be retired by the new save at 30; the others are untouched.
    assert {n: after[n] for n in (PREVIOUS, NEWEST)} == {n: before[n] for n in (PREVIOUS, NEWEST)}


# --- one writer per job_log_dir ------------------------------------------------------------------------
LONG = [*ARGS[:2], "--set", "num_train_steps=100000", "--set", "save_interval_steps=1000"]


def _record(job: Path) -> dict[str, object]:
    return json.loads((job / "pax_owner.json").read_text())


def test_a_second_job_on_a_live_job_log_dir_is_refused(tmp_path: Path, trainers) -> None:
    """Also when it has the same name in another namespace (the sample copied into two teams' namespaces)."""
    job = tmp_path / "shared"
    team_a = {ENV_JOB_NAME: "lm", ENV_JOB_NAMESPACE: "team-a"}
    first = trainers([*LONG, "--set", "eval_interval_steps=0"], job, env=team_a)
    first.wait_for(lambda: "training LmTiny" in first.log(), 180, "the first job to train")
    assert _record(job)["job"] == "paxjob/team-a/lm"

    second = run_trainer(ARGS, job, tmp_path, env={ENV_JOB_NAME: "lm", ENV_JOB_NAMESPACE: "team-b"})
    assert second.returncode == ExitCode.CONFIG_ERROR, second.stderr[-3000:]
    lines = error_lines(second)
    assert len(lines) == 1 and "is in use by paxjob/team-a/lm" in lines[0], second.stderr[-3000:]
    assert "PAX_OWNER_STALE_S" in lines[0]
    assert _record(job)["job"] == "paxjob/team-a/lm"
    first.kill()


def test_a_run_whose_job_log_dir_is_taken_over_stops_with_exit_2(tmp_path: Path, trainers) -> None:
    """The heartbeat (every PAX_OWNER_STALE_S / 4) re-reads the record: someone else's name there stops it."""
    job = tmp_path / "taken"
    env = {ENV_JOB_NAME: "alpha", "PAX_OWNER_STALE_S": "4"}
    run = trainers([*LONG, "--set", "eval_interval_steps=0"], job, env=env)
    run.wait_for(lambda: "training LmTiny" in run.log(), 180, "the job to train")
    # The intruder keeps its record fresh, as a trainer that took the directory over does: a single write
    # landing between the heartbeat's read and its write (~10 ms of each 1 s beat on a loaded machine) was
    # overwritten unseen, and the run trained on until the timeout.
    stop = threading.Event()

    def intruder_heartbeat() -> None:
        while not stop.is_set():
            record = {"job": "paxjob/beta", "host": "elsewhere", "pid": 1, "attempt": 0}
            text = json.dumps(record | {"heartbeat": time.time()})
            tmp = job / "pax_owner.json.intruder"
            tmp.write_text(text)
            tmp.replace(job / "pax_owner.json")
            stop.wait(0.25)

    intruder = threading.Thread(target=intruder_heartbeat, daemon=True)
    intruder.start()
    try:
        finished = run.finish_within(240)
    finally:
        stop.set()
        intruder.join(timeout=10)
    assert finished.returncode == ExitCode.CONFIG_ERROR, finished.stderr[-3000:]
    assert error_lines(finished) == [
        f"pax_trainer: error: job_log_dir {job} was taken over by paxjob/beta: stopping"
    ], finished.stderr[-3000:]
    assert finished.result and finished.result.exit_reason == "config_error"


def test_same_job_restart_and_stale_records_are_let_in(tmp_path: Path, source: Path) -> None:
    """A restart attempt of the same job (another host wrote the record) starts; so does anyone after a
    stale record; a live record of another host's job is refused."""
    job = tmp_path / "job"
    shutil.copytree(source, job, symlinks=True)
    fresh = {"host": "another-host", "pid": 1, "attempt": 0, "heartbeat": time.time(), "released": False}

    (job / "pax_owner.json").write_text(json.dumps({**fresh, "job": "paxjob/gamma"}))
    env = {ENV_JOB_NAME: "gamma", "PAX_RESTART_ATTEMPT": "1"}
    restart = run_trainer(ARGS, job, tmp_path, env=env)
    assert restart.returncode == 0, restart.stderr[-3000:]
    record = _record(job)
    assert (record["job"], record["host"], record["attempt"], record["released"]) == (
        "paxjob/gamma", socket.gethostname(), 1, True
    )  # fmt: skip

    (job / "pax_owner.json").write_text(json.dumps({**fresh, "job": "paxjob/delta"}))
    refused = run_trainer(ARGS, job, tmp_path, env={ENV_JOB_NAME: "gamma"})
    assert refused.returncode == ExitCode.CONFIG_ERROR and "in use by paxjob/delta" in refused.stderr

    stale = {**fresh, "job": "paxjob/delta", "heartbeat": time.time() - 30}
    (job / "pax_owner.json").write_text(json.dumps(stale))
    taken = run_trainer(ARGS, job, tmp_path, env={ENV_JOB_NAME: "gamma", "PAX_OWNER_STALE_S": "10"})
    assert taken.returncode == 0, taken.stderr[-3000:]
    assert "taking over job_log_dir" in taken.stderr and _record(job)["job"] == "paxjob/gamma"


def test_owner_record_rule() -> None:
    """The documented rule, case by case (pure: no job_log_dir)."""
    from pax_trainer.ownership import OwnerRecord, blocking_reason

    now, stale_s, here = 1000.0, 600.0, socket.gethostname()

    def record(**kw: object) -> OwnerRecord:
        base = {"job": "paxjob/other", "host": "another-host", "pid": 1, "attempt": 0, "heartbeat": now - 5}
        return OwnerRecord(**(base | kw))  # type: ignore[arg-type]

    me = "paxjob/mine"
    assert blocking_reason(None, me, now, stale_s) is None
    assert blocking_reason(record(job=me, attempt=3), me, now, stale_s) is None  # restart / another host
    assert blocking_reason(record(released=True), me, now, stale_s) is None
    assert blocking_reason(record(heartbeat=now - 601), me, now, stale_s) is None
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    assert blocking_reason(record(host=here, pid=dead), me, now, stale_s) is None
    live = blocking_reason(record(host=here, pid=os.getpid()), me, now, stale_s)
    assert live and "in use by paxjob/other" in live and "heartbeat 5 s ago" in live
    assert blocking_reason(record(), me, now, stale_s)


@pytest.mark.parametrize("value", ["soon", "1.5", "0", "-3"])
def test_malformed_deadline_settings_are_config_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from pax_trainer import ownership, storage
    from pax_trainer.errors import ConfigError

    monkeypatch.setenv(storage.ENV_TIMEOUT_S, value)
    monkeypatch.setenv(ownership.ENV_STALE_S, value)
    with pytest.raises(ConfigError, match=storage.ENV_TIMEOUT_S):
        storage.timeout_s()
    with pytest.raises(ConfigError, match=ownership.ENV_STALE_S):
        ownership.stale_after_s()


def _gcs_digest(gcs, prefix: str) -> dict[str, str]:
    """relative object name -> md5Hash (the emulator's own), for every object under `prefix`."""
    out: dict[str, str] = {}
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{gcs.url}/storage/v1/b/pax/o?{query}", timeout=10) as resp:
        doc = json.load(resp)
    assert not doc.get("nextPageToken")
    for item in doc.get("items", []):
        out[item["name"][len(prefix) :]] = item["md5Hash"]
    return out


def test_gcs_mismatch_keeps_and_uncommitted_moves_aside(tmp_path: Path, gcs) -> None:
    """On gs:// (no rename, no symlinks): the same rules, bytes compared by the store's md5."""
    env, job = gcs.env(), "gs://pax/safety"
    first = run_trainer(ARGS, job, tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _gcs_digest(gcs, "safety/checkpoints/")
    assert f"{NEWEST}/commit_success.txt" in before

    mismatch = run_trainer([*ARGS, "--set", "model_dim=32"], job, tmp_path, env)
    assert mismatch.returncode == ExitCode.CONFIG_ERROR, mismatch.stderr[-3000:]
    assert _gcs_digest(gcs, "safety/checkpoints/") == before

    marker = urllib.parse.quote(f"safety/checkpoints/{NEWEST}/commit_success.txt", safe="")
    req = urllib.request.Request(f"{gcs.url}/storage/v1/b/pax/o/{marker}", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()
    resumed = run_trainer(ARGS, job, tmp_path, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint at step {STEPS - 10}" in resumed.stderr
    aside = _gcs_digest(gcs, "safety/checkpoints_set_aside/")
    (name,) = {key.split("/")[0] for key in aside}
    assert name.startswith(f"{NEWEST}.uncommitted.")
    top_marker = f"{NEWEST}/commit_success.txt"
    uncommitted = {k: v for k, v in before.items() if k.startswith(f"{NEWEST}/") and k != top_marker}
    assert {k[len(name) + 1 :]: v for k, v in aside.items()} == {
        k[len(NEWEST) + 1 :]: v for k, v in uncommitted.items()
    }
    after = _gcs_digest(gcs, "safety/checkpoints/")
    kept = {k: v for k, v in before.items() if k.startswith(PREVIOUS)}
    assert {k: after[k] for k in kept} == kept


def _gang(trainers, args: list[str], job: Path) -> list[Run]:
    port = free_port()
    hosts = [trainers(args, job, env=gang_env(port, i) | {"POD_IP": "127.0.0.1"}) for i in range(2)]
    return [t.finish() for t in hosts]


def test_a_gang_agrees_before_moving_and_refuses_together(job: Path, trainers) -> None:
    """Two hosts: a corrupt newest is moved aside once (by process 0) and both resume from the previous
    checkpoint; a mismatched model stops both hosts with exit 2 and moves nothing."""
    before = committed(job)
    mismatch = _gang(trainers, [*ARGS, "--set", "model_dim=32"], job)
    assert [r.returncode for r in mismatch] == [ExitCode.CONFIG_ERROR] * 2, mismatch[1].stderr[-3000:]
    assert committed(job) == before and not set_aside(job)

    truncate_arrays(job / "checkpoints" / NEWEST)
    damaged = tree_digest(job / "checkpoints" / NEWEST)
    runs = _gang(trainers, ARGS, job)
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"resumed from checkpoint at step {STEPS - 10}" in run.stderr
    moved = set_aside(job)
    assert list(moved) == [NEWEST] and tree_digest(moved[NEWEST]) == damaged
    assert committed(job)[PREVIOUS] == before[PREVIOUS]


class _FlakyRestore:
    """Orbax's restore raising `error` on the first `times` calls, then reading for real."""

    def __init__(self, restore, error: Exception, times: int) -> None:
        self.restore, self.error, self.left = restore, error, times

    def __call__(self, *args, **kwargs):
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self.restore(*args, **kwargs)


@pytest.mark.parametrize(
    ("error", "times", "outcome"),
    [
        (ValueError("INTERNAL: connection reset while reading state/d/1"), 1, "restored"),
        (ValueError('UNAVAILABLE: Error reading "gs://b/job/checkpoints/...": HTTP 503'), 1, "storage error"),
        (ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 1.2GiB"), 5, "raised"),
    ],
    ids=["once", "unavailable", "out-of-memory"],
)
def test_a_failed_restore_of_a_good_checkpoint_never_sets_it_aside(
    tmp_path: Path, error: Exception, times: int, outcome: str
) -> None:
    """Corrupt means: fails twice while every byte reads back. A storage call that failed once (tensorstore
    raises those as ValueError) and running out of memory leave the newest checkpoint where it is."""
    import jax
    import jax.numpy as jnp
    from pax_trainer.checkpoints import Checkpointer
    from pax_trainer.errors import StorageError

    def state(step: int) -> dict[str, jax.Array]:
        return {"step": jnp.asarray(step, jnp.int32), "params.w": jnp.full((4,), float(step))}

    job = str(tmp_path / "job")
    writer = Checkpointer(job, max_to_keep=3, async_save=False)
    for step in (10, 20):
        writer.save(step, state(step), {"position": step})
    writer.close()
    before = committed(Path(job))
    abstract = {
        name: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for name, a in state(0).items()
    }

    reader = Checkpointer(job, max_to_keep=3, async_save=False)
    reader.manager.restore = _FlakyRestore(reader.manager.restore, error, times)
    try:
        if outcome == "restored":
            step, flat, data = reader.restore_latest(abstract)  # type: ignore[misc]
            assert (step, float(flat["params.w"][0]), data) == (20, 20.0, {"position": 20})
        else:
            with pytest.raises(
                StorageError if outcome == "storage error" else ValueError, match=str(error)[:12]
            ):
                reader.restore_latest(abstract)
    finally:
        reader.close()
    assert committed(Path(job)) == before and not (Path(job) / "checkpoints_set_aside").exists()


def test_a_relative_job_log_dir_checkpoints_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orbax refuses relative paths: `--job_log_dir 'runs/my job'` crashed at the first save, mid-training."""
    import jax.numpy as jnp
    from pax_trainer.checkpoints import Checkpointer, committed_steps

    monkeypatch.chdir(tmp_path)
    ckpt = Checkpointer("runs/my job", max_to_keep=2, async_save=True)
    ckpt.save(1, {"step": jnp.asarray(1, jnp.int32)}, {"position": 1})
    ckpt.close()
    assert committed_steps(ckpt.directory) == [1]
    assert (tmp_path / "runs" / "my job" / "checkpoints" / checkpoint_dir_name(1)).is_dir()


def test_a_failed_background_commit_is_never_reported_as_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`last_committed_step` feeds the result file and pax_last_checkpoint_step: a save whose background
    commit failed must raise there, not name a checkpoint that does not exist."""
    import jax.numpy as jnp
    from pax_trainer.checkpoints import Checkpointer

    ckpt = Checkpointer(str(tmp_path / "job"), max_to_keep=2, async_save=True)
    ckpt.save(1, {"step": jnp.asarray(1, jnp.int32)}, {"position": 1})
    ckpt.wait()
    assert ckpt.last_committed_step == 1
    ckpt.save(2, {"step": jnp.asarray(2, jnp.int32)}, {"position": 2})
    ckpt.wait = lambda: None  # type: ignore[method-assign]  # (close() must not commit it either)

    def failed() -> None:
        raise ValueError("ABORTED: commit of checkpoint 2 failed")

    monkeypatch.setattr(ckpt.manager, "check_for_errors", failed)
    deadline = time.monotonic() + 60
    try:
        with pytest.raises(Exception, match="commit of checkpoint 2 failed"):
            while time.monotonic() < deadline:  # 1 while the save is under way, then the error, never 2
                assert ckpt.last_committed_step == 1
                time.sleep(0.05)
    finally:
        ckpt.close()  # its writer thread and the GIL switch interval it set must not outlive the test


def test_a_record_written_before_namespaced_identities_is_the_same_jobs() -> None:
    """Trainers before PAX_JOB_NAMESPACE recorded `paxjob/<name>`: a job running across the upgrade is let in
    by its own record (a refusal, exit 2, would fail it for good); a namesake of another namespace is not."""
    from pax_trainer.ownership import OwnerRecord, blocking_reason

    def live(job: str) -> OwnerRecord:
        return OwnerRecord(job=job, host="elsewhere", pid=1, attempt=0, heartbeat=time.time())

    assert blocking_reason(live("paxjob/lm"), "paxjob/team-a/lm", time.time(), 600) is None
    assert blocking_reason(live("paxjob/team-b/lm"), "paxjob/team-a/lm", time.time(), 600) is not None
    assert blocking_reason(live("paxjob/other"), "paxjob/team-a/lm", time.time(), 600) is not None
