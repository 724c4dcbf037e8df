"""PaxJob integration harness: the operator as a subprocess under its own ServiceAccount, admin-side helpers
that create and read PaxJobs, and a fake kubelet that patches pod status (no kubelet runs in this tier)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OPERATOR_NAMESPACE = "pax-system"
OPERATOR_SA = "pax-operator"
GROUP, VERSION, PLURAL = "pax.dev", "v1alpha1", "paxjobs"
SCRAPE_INTERVAL_SECONDS = 1.0  # the operator's progress scrape / hang check cadence in these tests


def wait_for[T](what: str, probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})", pytrace=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OperatorProcess:
    """`python -m pax_operator` watching one namespace as system:serviceaccount:pax-system:pax-operator."""

    kubeconfig: Path
    namespace: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=_free_port)

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pax_operator",
                "-n",
                self.namespace,
                f"--liveness=http://127.0.0.1:{self.port}/healthz",
                f"--scrape-interval={SCRAPE_INTERVAL_SECONDS}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for("operator liveness", self._healthy, timeout=30)
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"operator exited {self.proc.returncode}:\n{self.log_tail()}", pytrace=False)
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{self.port}/healthz", timeout=1
            ) as response:
                return response.status == 200
        except OSError:
            return False

    def dump_stacks(self) -> None:
        """Ask the operator for its threads' stacks (into its log): diagnostics for a stalled test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as an OOM kill or node loss would do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Pax:
    """Admin-side helpers for one namespace: create PaxJobs, read them, play kubelet on their pods."""

    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    namespace: str

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "PaxJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}

    def wait_status(
        self, name: str, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict:
        return wait_for(f"{name}: {what}", lambda: (s := self.status(name)) and check(s) and s, timeout)

    def pods(self, job: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"pax.dev/job-name={job}", _preload_content=False
        )
        return sorted(json.loads(response.data)["items"], key=lambda p: p["metadata"]["name"])

    def wait_pods(self, job: str, count: int, attempt: int, timeout: float = 30) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            pods = self.pods(job)
            attempts = {p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in pods}
            return pods if len(pods) == count and attempts == {str(attempt)} else None

        return wait_for(f"{count} pods of {job} at attempt {attempt}", ready, timeout)

    def kubelet(
        self,
        pod: str,
        phase: str,
        *,
        exit_code: int | None = None,
        message: str | None = None,
        conditions: list[dict[str, Any]] | None = None,
        ip: str | None = None,
    ) -> None:
        """Patch a pod's status the way a kubelet reports it (no kubelet runs in this tier)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if exit_code is None:
            state: dict[str, Any] = {"running": {"startedAt": now}}
        else:
            state = {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": "Completed" if exit_code == 0 else "Error",
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
            if message is not None:
                state["terminated"]["message"] = message
        ip = ip or f"10.244.0.{int(pod.rsplit('-', 1)[1]) + 1}"  # stable per host: podIPs may not change
        status: dict[str, Any] = {
            "phase": phase,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "127.0.0.1",
            "startTime": now,
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "pax/trainer:test",
                    "imageID": "",
                    "ready": exit_code is None,
                    "started": exit_code is None,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        if conditions is not None:
            status["conditions"] = conditions
        self.core.patch_namespaced_pod_status(pod, self.namespace, {"status": status})

    def run_all(self, job: str) -> None:
        for pod in self.pods(job):
            self.kubelet(pod["metadata"]["name"], "Running")

    def events(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}")
        return [e.reason for e in sorted(events.items, key=lambda e: e.metadata.creation_timestamp)]


def cpu_job(hosts: int = 2, **extra: Any) -> dict[str, Any]:
    """A small valid PaxJob spec."""
    spec: dict[str, Any] = {
        "experiment": "lm_tiny",
        "image": "pax/trainer:test",
        "jobLogDir": "/data/runs/test",
        "topology": {"cpu": {"hosts": hosts}},
        "restartPolicy": {"backoffSeconds": 1},
    }
    spec.update(extra)
    return spec
