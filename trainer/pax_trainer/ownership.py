"""One writer per job_log_dir: an owner record (job_log_dir/pax_owner.json) checked and claimed by train runs.

Identity of a run (`run_identity`): `paxjob/<PAX_JOB_NAMESPACE>/<PAX_JOB_NAME>` when the operator set them
(every host and every restart attempt of one PaxJob share it; same-named jobs of two namespaces differ); else
`gang/<JAX_COORDINATOR_ADDRESS>` for a multi-process run; else `process/<hostname>/<pid>`. A train run may
start when the record is absent, unparsable, its own, released (its owner exited in order), or stale: no
heartbeat for PAX_OWNER_STALE_S seconds (default 600), or written by a process on this host that no longer
exists. Otherwise the run is refused: ConfigError (exit 2) naming the owner. Every host checks before the gang
forms; process 0 claims the record, refreshes its heartbeat every PAX_OWNER_STALE_S / 4 seconds while
training, and marks it released on exit. A heartbeat that finds the record taken over by another run stops
this one at once (exit 2), so two jobs never interleave.

Every claim, heartbeat and release is one compare-and-swap: on gs:// the write carries the generation it
read as a precondition (`ifGenerationMatch`), so a run that lost the record between its read and its write
finds out instead of overwriting the winner; on local paths an flock on pax_owner.json.lock spans both.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from etils import epath

from pax_trainer import paths, setup_jax, storage
from pax_trainer.errors import ConfigError, StorageError, exit_from_thread

log = logging.getLogger(__name__)

OWNER_RECORD = "pax_owner.json"
ENV_STALE_S = "PAX_OWNER_STALE_S"
DEFAULT_STALE_S = 600


@dataclass
class OwnerRecord:
    """What pax_owner.json holds."""

    job: str  # run_identity() of the owner
    host: str
    pid: int
    attempt: int
    heartbeat: float  # unix time of the last refresh
    released: bool = False


def stale_after_s() -> float:
    """Seconds without a heartbeat after which a record no longer blocks another run."""
    return storage.positive_seconds(ENV_STALE_S, DEFAULT_STALE_S)


def run_identity() -> str:
    """Who this run is (shared by all hosts and restart attempts of one job)."""
    env = setup_jax.read_env()
    if name := (env.job_name or "").strip():
        namespace = (env.job_namespace or "").strip()
        return f"paxjob/{namespace}/{name}" if namespace else f"paxjob/{name}"
    if env.coordinator_address and env.num_processes > 1:
        return f"gang/{env.coordinator_address}"
    return f"process/{socket.gethostname()}/{os.getpid()}"


def is_me(recorded: str, me: str) -> bool:
    """`recorded` names run `me`, also as trainers before PAX_JOB_NAMESPACE named a PaxJob (paxjob/<name>): a
    job running across that upgrade must not be refused by its own record (exit 2 would fail it for good)."""
    namespaced = me.startswith("paxjob/") and me.count("/") == 2
    return recorded == me or (namespaced and recorded == f"paxjob/{me.rsplit('/', 1)[1]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def blocking_reason(record: OwnerRecord | None, me: str, now: float, stale_s: float) -> str | None:
    """Why `record` keeps run `me` out of the job_log_dir, or None if it may write there."""
    if record is None or is_me(record.job, me) or record.released:
        return None
    age = now - record.heartbeat
    if age > stale_s:
        return None
    if record.host == socket.gethostname() and not _pid_alive(record.pid):
        return None
    return (
        f"in use by {record.job} (host {record.host}, pid {record.pid}, attempt {record.attempt}, "
        f"heartbeat {max(age, 0):.0f} s ago; the record goes stale after {stale_s:.0f} s, {ENV_STALE_S})"
    )


def _record_path(job_log_dir: str) -> epath.Path:
    return paths.join(job_log_dir, OWNER_RECORD)


def read(job_log_dir: str) -> OwnerRecord | None:
    """The owner record, None if there is none or it does not parse."""
    path = _record_path(job_log_dir)
    with storage.call(f"reading {path}"):
        if not path.exists():
            return None
        text = path.read_text()
    return _parse(text, path)


def _parse(text: str, path: epath.Path) -> OwnerRecord | None:
    try:
        doc = json.loads(text)
        return OwnerRecord(
            job=str(doc["job"]),
            host=str(doc["host"]),
            pid=int(doc["pid"]),
            attempt=int(doc.get("attempt", 0)),
            heartbeat=float(doc["heartbeat"]),
            released=bool(doc.get("released", False)),
        )
    except (ValueError, KeyError, TypeError) as err:
        log.warning("ignoring unparsable owner record %s: %s", path, storage.one_line(err))
        return None


def check(job_log_dir: str) -> None:
    """ConfigError if another live run owns job_log_dir (reads only; every host, before the gang forms)."""
    _admit(read(job_log_dir), run_identity(), job_log_dir)


def _admit(record: OwnerRecord | None, me: str, job_log_dir: str) -> None:
    reason = blocking_reason(record, me, time.time(), stale_after_s())
    if reason:
        raise ConfigError(f"job_log_dir {job_log_dir} is {reason}")
    if record is not None and not is_me(record.job, me) and not record.released:
        log.warning("taking over job_log_dir %s from %s (stale owner record)", job_log_dir, record.job)


def _text(record: OwnerRecord) -> str:
    return json.dumps(asdict(record), sort_keys=True)


def _swap(job_log_dir: str, change: Callable[[OwnerRecord | None], OwnerRecord | None]) -> bool:
    """Replace the record with `change(current)` (None: leave it) as one step; False if another writer
    replaced the record between this read and this write (gs:// only: a local flock keeps them out)."""
    path = _record_path(job_log_dir)
    if paths.is_gcs(job_log_dir):
        return _swap_gcs(job_log_dir, change)
    with storage.call(f"writing {path}"):
        os.makedirs(path.parent, exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            record = change(read(job_log_dir))
            if record is not None:
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(_text(record))
                os.replace(tmp, path)
    return True


def _swap_gcs(job_log_dir: str, change: Callable[[OwnerRecord | None], OwnerRecord | None]) -> bool:
    import gcsfs

    path = _record_path(job_log_dir)
    bucket, key = str(path)[len("gs://") :].split("/", 1)
    with storage.call(f"reading {path}"):
        fs = gcsfs.GCSFileSystem(retries=1, timeout=storage.timeout_s(), skip_instance_cache=True)
        try:
            generation = str(fs.info(f"{bucket}/{key}")["generation"])
            current = _parse(fs.cat_file(f"{bucket}/{key}", generation=generation).decode(), path)
        except FileNotFoundError:  # none yet, or replaced since the info: then the write below fails
            generation, current = "0", None  # "0": GCS's precondition for "no such object yet"
    record = change(current)
    if record is None:
        return True
    metadata = json.dumps({"name": key})
    part = "--==0==\nContent-Type: application/json{}\n\n"
    body = f"{part.format('; charset=UTF-8')}{metadata}\n{part.format('')}{_text(record)}\n--==0==--"
    with storage.call(f"writing {path}"):
        try:
            fs.call(
                "POST",
                f"{fs._location}/upload/storage/v1/b/{bucket}/o",
                uploadType="multipart",
                ifGenerationMatch=generation,
                headers={"Content-Type": 'multipart/related; boundary="==0=="'},
                data=body.encode(),
                json_out=True,
            )
        except FileExistsError:  # HTTP 412: the precondition failed
            return False
    return True


class Ownership:
    """Process 0's claim on a job_log_dir: claimed on start, heartbeat on a thread, released on close."""

    def __init__(self, job_log_dir: str) -> None:
        self.job_log_dir = job_log_dir
        self.me = run_identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, released: bool = False) -> OwnerRecord:
        return OwnerRecord(
            job=self.me,
            host=socket.gethostname(),
            pid=os.getpid(),
            attempt=setup_jax.read_env().restart_attempt,
            heartbeat=time.time(),
            released=released,
        )

    def _holds(self, record: OwnerRecord | None) -> bool:
        """`record` is this process's own (a write whose answer was lost but which landed)."""
        return record is not None and (record.job, record.host, record.pid) == (
            self.me, socket.gethostname(), os.getpid()
        )  # fmt: skip

    def _other_owner(self) -> str | None:
        current = read(self.job_log_dir)
        return current.job if current is not None and current.job != self.me else None

    def claim(self) -> None:
        """Check and write the record in one swap (a rival claiming at once loses: ConfigError); heartbeat."""

        def take(current: OwnerRecord | None) -> OwnerRecord:
            _admit(current, self.me, self.job_log_dir)
            return self._record()

        if not _swap(self.job_log_dir, take):
            current = read(self.job_log_dir)
            if not self._holds(current):
                owner = current.job if current else "nobody"
                raise ConfigError(f"job_log_dir {self.job_log_dir} was claimed by {owner} at the same time")
        self._thread = threading.Thread(target=self._heartbeat, name="pax_owner", daemon=True)
        self._thread.start()

    def _mine_or_free(self, released: bool) -> Callable[[OwnerRecord | None], OwnerRecord | None]:
        """A swap that writes this run's record unless another run's is there (then leaves that one)."""
        return lambda current: self._record(released) if current is None or current.job == self.me else None

    def _heartbeat(self) -> None:
        interval = max(1.0, stale_after_s() / 4)
        while not self._stop.wait(interval):
            try:
                _swap(self.job_log_dir, self._mine_or_free(released=False))
                owner = self._other_owner()  # also when the swap lost: the winner's name
            except StorageError as err:  # a failed (not overdue) call: try again at the next beat
                log.warning("owner heartbeat: %s", err)
                continue
            if owner is not None:
                exit_from_thread(
                    ConfigError(f"job_log_dir {self.job_log_dir} was taken over by {owner}: stopping")
                )

    def release(self) -> None:
        """Stop heartbeats and mark the record released (so another run may start at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=storage.timeout_s() + 5)
        try:
            _swap(self.job_log_dir, self._mine_or_free(released=True))
        except Exception as err:  # the record then goes stale on its own
            log.warning("cannot release owner record of %s: %s", self.job_log_dir, storage.one_line(err))
