"""PaxJob integration harness: the operator as a subprocess under its own ServiceAccount, admin-side helpers
that create and read PaxJobs, and a fake kubelet that patches pod status (no kubelet runs in this tier)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import pytest
from kubernetes import client
from pax_cluster import operator_process
from pax_cluster.kubelet.common import now
from pax_cluster.podenv import reported_status
from pax_cluster.procs import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from tests.api import unless_missing

__all__ = ["wait_for"]  # the shared bounded wait, re-exported for this tier's tests

OPERATOR_NAMESPACE = "pax-system"
OPERATOR_SA = "pax-operator"
GROUP, VERSION, PLURAL = "pax.dev", "v1alpha1", "paxjobs"
SCRAPE_INTERVAL_SECONDS = 1.0  # the operator's progress scrape / hang check cadence in these tests


class OperatorProcess(operator_process.OperatorProcess):
    """`python -m pax_operator` watching one namespace as system:serviceaccount:pax-system:pax-operator."""

    def __init__(
        self, kubeconfig: Path, namespace: str, log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        super().__init__(
            kubeconfig,
            log_path,
            namespaces=[namespace],
            scrape_interval_s=SCRAPE_INTERVAL_SECONDS,
            extra_args=extra_args,  # e.g. leader election flags
        )
        self.namespace = namespace

    def start(self, timeout_s: float = 30.0) -> Self:
        try:
            return super().start(timeout_s)
        except operator_process.OperatorError as err:
            pytest.fail(str(err), pytrace=False)


class ObservedOperator(OperatorProcess):
    """An OperatorProcess serving /metrics and /readyz on a port of its own, and reading them."""

    def __init__(
        self, kubeconfig: Path, namespace: str, log_path: Path, extra_args: Sequence[str] = ()
    ) -> None:
        self.metrics_port = free_port()
        address = f"--metrics-address=127.0.0.1:{self.metrics_port}"
        super().__init__(kubeconfig, namespace, log_path, extra_args=[*extra_args, address])

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, stripped body) of `path`; (0, the error) when nothing answers."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as response:
                return response.status, response.read().decode().strip()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode().strip()
        except OSError as err:
            return 0, str(err)

    def readiness(self) -> tuple[int, str]:
        return self.get("/readyz")

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples carrying `labels`."""
        return sum(
            sample.value
            for family in text_string_to_metric_families(self.get("/metrics")[1])
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )


class NamespacedObjects:
    """create / get / status of one pax.dev kind in `self.namespace` (the base of Pax and Sweeps)."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    custom: client.CustomObjectsApi
    namespace: str

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": self.kind,
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, body)

    def get(self, name: str) -> dict[str, Any] | None:
        return unless_missing(
            lambda: self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, self.plural, name
            )
        )

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(name) or {}).get("status") or {}


@dataclass
class Pax(NamespacedObjects):
    """Admin-side helpers for one namespace: create PaxJobs, read them, play kubelet on their pods."""

    kind: ClassVar[str] = "PaxJob"
    plural: ClassVar[str] = PLURAL
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    namespace: str

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

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
        ip = ip or f"10.244.0.{int(pod.rsplit('-', 1)[1]) + 1}"  # stable per host: podIPs may not change
        container = {"name": "trainer", "image": "pax/trainer:test"}
        status = reported_status(phase, container, ip, now(), exit_code=exit_code, message=message or "")
        if conditions is not None:
            status["conditions"] = conditions
        self.core.patch_namespaced_pod_status(pod, self.namespace, {"status": status})

    def run_all(self, job: str) -> None:
        for pod in self.pods(job):
            self.kubelet(pod["metadata"]["name"], "Running")

    def events(self, name: str) -> list[str]:
        events = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}")
        return [e.reason for e in sorted(events.items, key=lambda e: e.metadata.creation_timestamp)]

    def wait_events(self, name: str, *reasons: str, timeout: float = 30) -> list[str]:
        """`events(name)` once every one of `reasons` is among them. The operator posts Events off its
        reconcile path, after the writes they describe: a status or pod the test has seen may be ahead of
        its Event."""

        def posted() -> list[str] | None:
            seen = self.events(name)
            return seen if set(reasons) <= set(seen) else None

        return wait_for(f"{name}'s events {sorted(reasons)}", posted, timeout)


def cpu_job(hosts: int = 2, **extra: Any) -> dict[str, Any]:
    """A small valid PaxJob spec."""
    spec: dict[str, Any] = {
        "experiment": "lm_tiny",
        "image": "pax/trainer:test",
        "jobLogDir": "gs://pax-test/runs/test",  # a local path needs a persistent volume (CRD rule)
        "topology": {"cpu": {"hosts": hosts}},
        "restartPolicy": {"backoffSeconds": 1},
    }
    spec.update(extra)
    return spec
