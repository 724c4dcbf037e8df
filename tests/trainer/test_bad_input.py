"""Must show 6: bad input -> one clear line naming the problem, the documented exit code, nothing written."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pax_contract import ExitCode

from tests.trainer.conftest import Trainer

pytestmark = [pytest.mark.timeout(300)]

OK = ["--exp", "reverse_digits"]
CASES = {
    "unknown_experiment": (
        ["--exp", "no_such_exp"],
        ExitCode.CONFIG_ERROR,
        "unknown experiment 'no_such_exp'",
    ),
    "unknown_dotted_experiment": (["--exp", "pax_trainer.nope.Exp"], ExitCode.CONFIG_ERROR, "cannot import"),
    "malformed_override": ([*OK, "--set", "num_train_steps"], ExitCode.CONFIG_ERROR, "malformed override"),
    "bad_value": ([*OK, "--set", "learning_rate=fast"], ExitCode.CONFIG_ERROR, "invalid value 'fast'"),
    "unknown_hparam": ([*OK, "--set", "no_such_hparam=1"], ExitCode.CONFIG_ERROR, "unknown hyperparameter"),
    "malformed_json": (
        [*OK, "--overrides_json", "{oops"],
        ExitCode.CONFIG_ERROR,
        "malformed --overrides_json",
    ),
    "unknown_json_hparam": (
        [*OK, "--overrides_json", '{"nope": 1}'],
        ExitCode.CONFIG_ERROR,
        "unknown hyperparameter",
    ),
    "bad_flag": ([*OK, "--mode", "fly"], ExitCode.CONFIG_ERROR, "invalid choice"),
    "bad_dna": ([*OK, "--dna_json", "[1,"], ExitCode.CONFIG_ERROR, "malformed --dna_json"),
    "unreachable_local_dir": (OK, ExitCode.STORAGE_ERROR, "is not a directory"),
    "missing_bucket": (OK, ExitCode.STORAGE_ERROR, "bucket no-such-bucket does not exist"),
    "pseudo_fs_dir": (OK, ExitCode.STORAGE_ERROR, "job_log_dir /proc/pax_x/job is not writable"),
    "unanswering_gcs": (OK, ExitCode.STORAGE_ERROR, "no answer from storage within 5 s"),
}
STORAGE_TIMEOUT_S = 5  # PAX_STORAGE_TIMEOUT_S for the unanswering endpoint (default 60)


@pytest.fixture(scope="module")
def unanswering_endpoint() -> Iterator[str]:
    """An HTTP 'storage endpoint' on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory, gcs, unanswering_endpoint: str
) -> dict[str, tuple[Trainer, object, Path]]:
    """All cases run in parallel (each is a fresh interpreter importing jax: ~3 s of CPU)."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "a_file").write_text("x")
    started = {}
    for name, (args, _, _) in CASES.items():
        job: str = str(tmp / name / "job")
        if name == "unreachable_local_dir":
            job = str(tmp / "a_file" / "job")
        env = gcs.env()
        if name == "missing_bucket":
            job = "gs://no-such-bucket/job"
        if name == "pseudo_fs_dir":
            job = "/proc/pax_x/job"
        if name == "unanswering_gcs":
            job = "gs://pax/job"
            env |= {
                "STORAGE_EMULATOR_HOST": unanswering_endpoint,
                "TENSORSTORE_GCS_HTTP_URL": unanswering_endpoint,
                "PAX_STORAGE_TIMEOUT_S": str(STORAGE_TIMEOUT_S),
            }
        started[name] = Trainer(args, job, tmp, env=env)
    out = {}
    for name, t in started.items():
        out[name] = (t, t.finish(timeout=120), tmp)
    yield out
    for t, _, _ in out.values():
        t.kill()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, outcomes) -> None:
    t, run, tmp = outcomes[case]
    _, code, text = CASES[case]
    assert run.returncode == code, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("pax_trainer: error: ") and text in lines[0], lines[0]
    doc = json.loads(t.result_file.read_text())
    assert doc["exit_reason"] == ("config_error" if code == ExitCode.CONFIG_ERROR else "storage_error")
    assert text in doc["message"]
    assert not (tmp / case).exists(), "nothing may be written for bad input"
    assert not (tmp / "a_file").is_dir()
