"""job_log_dir handling for local paths and gs:// (fsspec/gcsfs through etils.epath)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from etils import epath
from pax_contract import CHECKPOINTS_DIR

from pax_trainer import storage
from pax_trainer.errors import ConfigError, StorageError


def is_gcs(path: str) -> bool:
    """True for gs:// URLs."""
    return path.startswith("gs://")


def prepare_environment() -> None:
    """Defaults that keep gcsfs/auth libraries away from metadata servers when an emulator is in use."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs 2026.10 makes a gRPC layout probe that stalls 60 s per call against emulators.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "fake")
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", os.environ["STORAGE_EMULATOR_HOST"])
        os.environ.setdefault("NO_GCE_CHECK", "true")
        os.environ.setdefault("FSSPEC_GS_TOKEN", "anon")  # gcsfs: no credential lookup
    os.environ.setdefault("EPATH_USE_TF", "false")


def check_job_log_dir(job_log_dir: str) -> None:
    """StorageError unless job_log_dir is a writable dir or could be created; leaves nothing behind.

    Local: the nearest existing ancestor must be a directory where a directory can really be created (a
    probe dir, removed at once: `os.access` says yes for root on /proc), and a plain file where the
    checkpoints dir goes is a ConfigError. gs://: the bucket must list within the storage deadline.
    """
    if not job_log_dir:
        raise StorageError("--job_log_dir is empty")
    if is_gcs(job_log_dir):
        _check_gcs(job_log_dir)
        return
    path = Path(job_log_dir).absolute()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"job_log_dir {job_log_dir} is not reachable: {probe} is not a directory")
    if probe == path and (path / CHECKPOINTS_DIR).exists() and not (path / CHECKPOINTS_DIR).is_dir():
        # a mistake in the job's own dir (the run could only ever fail on it), not a storage failure to retry
        raise ConfigError(f"job_log_dir {job_log_dir} holds a file named {CHECKPOINTS_DIR}, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StorageError(f"job_log_dir {job_log_dir} is not writable: no write permission on {probe}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".pax_probe_", dir=probe))
    except OSError as err:
        raise StorageError(f"job_log_dir {job_log_dir} is not writable: {storage.one_line(err)}") from None


def _check_gcs(url: str) -> None:
    import gcsfs

    bucket = url[len("gs://") :].split("/", 1)[0]
    if not bucket:
        raise StorageError(f"job_log_dir {url} has no bucket")
    try:
        with storage.call(f"job_log_dir {url} is not reachable"):
            fs = gcsfs.GCSFileSystem(retries=1, timeout=storage.timeout_s(), skip_instance_cache=True)
            try:
                fs.ls(bucket, detail=False)
            except FileNotFoundError:
                raise StorageError(
                    f"job_log_dir {url} is not reachable: bucket {bucket} does not exist"
                ) from None
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(f"job_log_dir {url} is not reachable: {storage.one_line(err, 200)}") from None
    with storage.call(f"job_log_dir {url} is not reachable"):
        try:
            is_file = fs.isfile(url)
        except Exception:  # a missing prefix is fine: it will be created
            is_file = False
    if is_file:
        raise StorageError(f"job_log_dir {url} is a file, not a directory")


def join(base: str, *parts: str) -> epath.Path:
    """base/parts as an epath.Path (works for local paths and gs://); a relative local base is taken from
    the working directory (Orbax refuses relative checkpoint paths)."""
    return epath.Path(base if is_gcs(base) else os.path.abspath(base)).joinpath(*parts)
