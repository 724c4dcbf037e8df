"""Trainer test helpers: bounded subprocess runs of `python -m pax_trainer`, the GCS emulator, shared runs."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pax_cluster import procs
from pax_contract import ENV_RESULT_FILE, TrainerResult

RUN_TIMEOUT_S = 240.0  # any single trainer subprocess; killed with SIGKILL past this
BASE_ENV = {
    "JAX_PLATFORMS": "cpu",
    "PYTHONUNBUFFERED": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
# The resume tests share one uninterrupted baseline: reverse_digits, these exact settings.
RESUME_STEPS = 400


def trainer_args(exp: str, **hparams: object) -> list[str]:
    """`--exp exp --set name=value ...`: the trainer's argv for `exp` with `hparams` set."""
    return ["--exp", exp, *(arg for name, value in hparams.items() for arg in ("--set", f"{name}={value}"))]


RESUME_ARGS = trainer_args(
    "reverse_digits", num_train_steps=RESUME_STEPS, save_interval_steps=50, eval_interval_steps=0
)


@dataclass
class Run:
    """A finished trainer run."""

    returncode: int
    stdout: str
    stderr: str
    result: TrainerResult | None
    job_log_dir: str


class Trainer:
    """A trainer subprocess (own process group) whose every wait is bounded and which is SIGKILLed on exit."""

    def __init__(
        self, args: list[str], job_log_dir: str, tmp: Path, env: dict[str, str] | None = None
    ) -> None:
        self.job_log_dir = job_log_dir
        self.result_file = tmp / f"result-{time.monotonic_ns()}.json"
        self.log_file = tmp / f"log-{time.monotonic_ns()}.txt"
        full_env = {**os.environ, **BASE_ENV, ENV_RESULT_FILE: str(self.result_file), **(env or {})}
        cmd = [sys.executable, "-m", "pax_trainer", "--job_log_dir", job_log_dir, *args]
        with self.log_file.open("wb") as log, (tmp / f"out-{time.monotonic_ns()}.txt").open("wb") as out:
            self.out_file = Path(out.name)
            self.proc = subprocess.Popen(
                cmd, env=full_env, stdout=out, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.started = time.monotonic()

    def log(self) -> str:
        """stderr so far."""
        return self.log_file.read_text(errors="replace")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `predicate` until true; fail (and kill) if the process exits first or time runs out."""

        def probe() -> bool:
            if predicate():
                return True
            if self.proc.poll() is not None:
                pytest.fail(f"trainer exited {self.proc.returncode} before {what}:\n{self.log()[-3000:]}")
            return False

        try:
            procs.wait_for(what, probe, timeout, interval=0.05)
        except procs.WaitTimeout as err:
            self.kill()
            pytest.fail(f"{err}:\n{self.log()[-3000:]}")

    def signal(self, sig: int) -> None:
        """Send `sig` to the trainer process."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)

    def finish(self, timeout: float = RUN_TIMEOUT_S) -> Run:
        """Wait (bounded: `timeout` seconds from the start) for exit; on timeout SIGKILL and fail."""
        remaining = max(1.0, timeout - (time.monotonic() - self.started))
        try:
            self.proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"trainer hung for {timeout} s; killed:\n{self.log()[-3000:]}")
        result = None
        if self.result_file.exists() and self.result_file.read_text():
            result = TrainerResult.from_json(self.result_file.read_text())
        return Run(self.proc.returncode, self.out_file.read_text(), self.log(), result, self.job_log_dir)

    def finish_within(self, seconds: float) -> Run:
        """`finish`, bounded `seconds` from now: for the exit after a signal or an injected fault, whatever
        the start-up (jax's imports and compiles) took before it."""
        return self.finish(timeout=time.monotonic() - self.started + seconds)


@pytest.fixture
def trainers(tmp_path: Path) -> Iterator[Callable[..., Trainer]]:
    """Factory for Trainer processes; any still running at teardown are SIGKILLed."""
    started: list[Trainer] = []

    def start(args: list[str], job_log_dir: str | Path, env: dict[str, str] | None = None) -> Trainer:
        t = Trainer(args, str(job_log_dir), tmp_path, env)
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()


def run_trainer(
    args: list[str], job_log_dir: str | Path, tmp: Path, env: dict[str, str] | None = None
) -> Run:
    """Run the trainer to completion (bounded)."""
    t = Trainer(args, str(job_log_dir), tmp, env)
    try:
        return t.finish()
    finally:
        t.kill()


def gang_env(port: int, process_id: int, num_processes: int = 2) -> dict[str, str]:
    """The environment of host `process_id` of a local gang of one-device CPU processes (coordinator on
    127.0.0.1:`port`)."""
    return {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(process_id),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
    }


def metrics_text(port: int) -> str:
    """GET /metrics from a trainer, '' if it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def read_result(path: Path) -> dict[str, object]:
    """Raw result JSON."""
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer")


@pytest.fixture(scope="session")
def baseline(session_tmp: Path) -> Run:
    """One uninterrupted reverse_digits run shared by the resume / truncation / fine-tune tests."""
    run = run_trainer(RESUME_ARGS, session_tmp / "baseline", session_tmp)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="session")
def gcs() -> Iterator[object]:
    """A fake-gcs-server with bucket `pax` for the session."""
    from pax_cluster.gcs_emulator import GcsEmulator

    with GcsEmulator() as emulator:
        emulator.create_bucket("pax")
        yield emulator


def truncate_arrays(ckpt: Path) -> None:
    """Damage a checkpoint: cut each array data file of its state in half."""
    for f in (ckpt / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def drop_commit_marker(ckpt: Path) -> None:
    """Damage a checkpoint: remove the marker that says it was written completely."""
    (ckpt / "commit_success.txt").unlink()


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of the bytes, or 'link:<target>' for a symlink (never followed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = f"link:{os.readlink(path)}"
            elif path.is_file():
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def committed(job: Path) -> dict[str, dict[str, str]]:
    """Digest of every committed checkpoint dir (a real dir holding the commit marker)."""
    ckpts = job / "checkpoints"
    return {
        d.name: tree_digest(d)
        for d in sorted(ckpts.iterdir())
        if not d.is_symlink() and (d / "commit_success.txt").is_file()
    }


STALL_BOUND_S = 600.0  # the longest a FailingGcs leaves a stalled request unanswered


class FailingGcs:
    """A proxy in front of the GCS emulator that answers `status` to every request whose path (or body: an
    upload's object name) contains one of `failing` (an outage, throttling: 503, 429); passes others on.
    Requests matching one of `stalling` get no answer at all (stalled storage) until `close()`."""

    def __init__(self, upstream: str, status: int = 503) -> None:
        self.failing: list[str] = []
        self.failed = 0
        self.stalling: list[str] = []
        self.stalled = 0
        self._released = threading.Event()
        target = urllib.parse.urlparse(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                seen = urllib.parse.unquote(self.path) + (body or b"")[:4096].decode(errors="replace")
                if any(needle in seen for needle in proxy.stalling):
                    proxy.stalled += 1
                    proxy._released.wait(STALL_BOUND_S)  # bounded: the test's own timeout is shorter
                    self.close_connection = True
                    return
                if any(needle in seen for needle in proxy.failing):
                    proxy.failed += 1
                    self._reply(
                        status, [("Content-Type", "application/json")], b'{"error": {"code": %d}}' % status
                    )
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                }
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                skip = ("transfer-encoding", "content-length", "connection")
                self._reply(
                    resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in skip], resp.read()
                )

            def _reply(self, code: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(code)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def env(self, gcs_env: dict[str, str]) -> dict[str, str]:
        """The emulator's environment, pointed at this proxy."""
        return gcs_env | {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url}

    def close(self) -> None:
        self._released.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def failing_gcs(gcs) -> Iterator[FailingGcs]:
    """A FailingGcs (503) in front of the session's emulator."""
    proxy = FailingGcs(gcs.url)
    yield proxy
    proxy.close()
