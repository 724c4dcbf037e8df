"""E2E tier: one LocalStack (control plane + operator + process kubelet) for the whole session.

Scenarios run concurrently (one namespace each) in threads started by the session fixture `scenarios`;
each test asserts its own scenario's outcome, so the tier's wall time is the slowest scenario, not the sum.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pax_cluster.procs import log_tail as tail
from pax_cluster.procs import wait_for
from pax_cluster.stack import LocalStack

from tests.checkpoints import checkpoint_state

JOB_TIMEOUT_S = 300.0  # any single PaxJob, start to terminal phase
NUM_TRAIN_STEPS = 300
CHECKPOINT_INTERVAL = 50


class Jobs:
    """PaxJob helpers in one namespace of the stack."""

    def __init__(self, stack: LocalStack, namespace: str) -> None:
        self.stack = stack
        self.ns = namespace

    def create(self, name: str, spec: dict[str, Any]) -> None:
        """Apply a PaxJob."""
        body = {
            "apiVersion": "pax.dev/v1alpha1",
            "kind": "PaxJob",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": spec,
        }
        self.stack.kubectl("apply", "-f", "-", input=json.dumps(body))

    def patch_spec(self, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch the PaxJob's spec."""
        body = json.dumps({"spec": patch})
        self.stack.kubectl("patch", "paxjob", name, "-n", self.ns, "--type=merge", "-p", body)

    def get(self, name: str) -> dict[str, Any]:
        """The PaxJob object ({} if absent)."""
        out = self.stack.kubectl("get", "paxjob", name, "-n", self.ns, "-o", "json", check=False)
        return json.loads(out) if out else {}

    def status(self, name: str) -> dict[str, Any]:
        """The PaxJob status ({} before the operator wrote one)."""
        return self.get(name).get("status") or {}

    def wait(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = JOB_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Wait for the status to satisfy `predicate`; fails early on an unexpected terminal phase."""

        def probe() -> dict[str, Any] | None:
            st = self.status(name)
            if predicate(st):
                return st or {"_": True}
            return None

        try:
            return wait_for(f"{self.ns}/{name}: {what}", probe, timeout, interval=0.5)
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}\nstatus: {json.dumps(self.status(name))}\n{self.diagnostics()}"
            ) from None

    def wait_phase(self, name: str, phase: str, timeout: float = JOB_TIMEOUT_S) -> dict[str, Any]:
        """Wait for `phase`; a different terminal phase fails at once."""
        terminal = {"Succeeded", "Failed"} - {phase}

        def pred(st: dict[str, Any]) -> bool:
            if st.get("phase") in terminal:
                raise AssertionError(
                    f"{self.ns}/{name} ended {st['phase']}: {json.dumps(st)}\n{self.diagnostics()}"
                )
            return st.get("phase") == phase

        return self.wait(name, pred, f"phase {phase}", timeout)

    def pods(self, name: str) -> list[dict[str, Any]]:
        """Pods of the job (all attempts still present)."""
        out = self.stack.kubectl("get", "pods", "-n", self.ns, "-l", f"pax.dev/job-name={name}", "-o", "json")
        return list(json.loads(out)["items"])

    def log(self, pod: str, container: str = "trainer") -> str:
        """The container's log on the process kubelet."""
        from pax_cluster.kubelet import container_log

        path = container_log(self.stack.kubelet_root, self.ns, pod, container)
        return tail(path, 30)

    def diagnostics(self) -> str:
        """Operator log tail and trainer log tails (for failure messages)."""
        parts = [f"--- operator\n{tail(self.stack.operator_log, 30)}"]
        pods_dir = self.stack.kubelet_root / "pods" / self.ns
        if pods_dir.is_dir():
            for log in sorted(pods_dir.glob("*/trainer.log")):
                parts.append(f"--- {log.parent.name}\n{tail(log, 15)}")
        return "\n".join(parts)


def lm_spec(log_dir: str, **extra: Any) -> dict[str, Any]:
    """The shared 2-host lm_tiny spec (the reference run and the disrupted runs use exactly this)."""
    spec: dict[str, Any] = {
        "experiment": "lm_tiny",
        "image": "pax/trainer:dev",
        "jobLogDir": log_dir,
        "topology": {"cpu": {"hosts": 2}},
        "overrides": {"num_train_steps": str(NUM_TRAIN_STEPS)},
        "checkpointIntervalSteps": CHECKPOINT_INTERVAL,
        "restartPolicy": {"backoffSeconds": 1},
    }
    if not log_dir.startswith("gs://"):
        spec["podTemplate"] = {
            "volumes": [{"name": "joblog", "hostPath": {"path": log_dir}}],
            "volumeMounts": [{"name": "joblog", "mountPath": log_dir}],
        }
    spec.update(extra)
    return spec


def final_params(log_dir: Path) -> tuple[int, dict[str, np.ndarray]]:
    """(step, flattened train state as numpy) of the last committed checkpoint under `log_dir`."""
    from etils import epath
    from pax_contract import CHECKPOINTS_DIR
    from pax_trainer.checkpoints import checkpoint_dir_name, committed_steps

    ckpts = epath.Path(log_dir) / CHECKPOINTS_DIR
    step = committed_steps(ckpts)[-1]
    return step, checkpoint_state(Path(str(ckpts / checkpoint_dir_name(step))))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One LocalStack for the e2e tier, scraping host 0 every second."""
    with LocalStack(tmp_path_factory.mktemp("stack"), scrape_interval_s=1.0) as s:
        yield s


def create_namespace(stack: LocalStack, prefix: str) -> str:
    """A fresh (not PSA-restricted: hostPath) namespace, once its `default` ServiceAccount exists."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    stack.control_plane.create_namespace(name)
    return name


Scenario = Callable[[LocalStack, Jobs, Path], Any]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario run concurrently by the `scenarios` fixture."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


@pytest.fixture(scope="session")
def scenarios(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Any]]]:
    """Start every registered scenario at once (each in its own namespace); futures by name."""
    pool = ThreadPoolExecutor(max_workers=len(SCENARIOS) or 1)
    futures: dict[str, Future[Any]] = {}
    namespaces: list[str] = []
    for name, fn in SCENARIOS.items():
        ns = create_namespace(stack, name)
        namespaces.append(ns)
        futures[name] = pool.submit(fn, stack, Jobs(stack, ns), Path(tmp_path_factory.mktemp(name)))
    try:
        yield futures
    finally:
        pool.shutdown(wait=True)
        for ns in namespaces:
            stack.kubectl("delete", "namespace", ns, "--wait=false", check=False)
