"""What every part of the process kubelet shares: the pod directory layout, time stamps, API retries."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime
from pathlib import Path

from kubernetes.client.exceptions import ApiException
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

MERGE = "application/merge-patch+json"
REQUEST_TIMEOUT_S = 30


def now() -> str:
    """An RFC 3339 time stamp (seconds), as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retryable(err: BaseException) -> bool:
    return isinstance(err, ApiException) and err.status in (409, 429, 500, 502, 503, 504)


api_retry = retry(
    retry=retry_if_exception(_retryable),
    stop=stop_after_attempt(6),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)


def pod_dir(root: Path, namespace: str, name: str) -> Path:
    """Where a pod's logs, pid files, termination messages and emptyDirs live."""
    return root / "pods" / namespace / name


def container_log(root: Path, namespace: str, pod: str, container: str) -> Path:
    """The log file of one container (stdout and stderr of every run, appended)."""
    return pod_dir(root, namespace, pod) / f"{container}.log"


def kill_container(root: Path, namespace: str, pod: str, container: str, sig: int = signal.SIGKILL) -> int:
    """Signal a running container's process group (tests: a hard crash of one host); returns the pid."""
    pid = int((pod_dir(root, namespace, pod) / f"{container}.pid").read_text())
    os.killpg(pid, sig)
    return pid
