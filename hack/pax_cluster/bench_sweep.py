"""`make bench-sweep`: PaxSweep's controller on a real local apiserver with simulated trial outcomes.

A fresh control plane (etcd + kube-apiserver + controller-manager; no kubelet), the CRDs and RBAC, and
`python -m pax_operator` as a subprocess under its own ServiceAccount. One sweep per algorithm with
PAX_BENCH_SWEEP_TRIALS trials (default 1000), PAX_BENCH_SWEEP_PARALLEL at a time (default 20); its trial
PaxJobs get gang pods that stay Pending (no kubelet) and this process plays the trainer: each new trial is
marked Succeeded with a deterministic objective as soon as it appears (a sweep template may not suspend its
trials).

Reported per algorithm: wall seconds, wall ms per trial, the operator's CPU ms per trial (from /proc: propose
+ create + feedback + status, plus watching), the PaxSweep object's size at the end (goal < 100 KB), the
largest trial annotation, and the apiserver's side of the sweep's passes: passes (the apiserver's GETs of
the PaxSweep less this bench's own: each pass reads its sweep once), LISTs of PaxJobs and their response
bytes, in all and per pass (from the apiserver's /metrics: apiserver_request_total and
apiserver_response_sizes; this bench follows the trials with a watch, so every LIST counted is the
operator's). Then the time of one GP-bandit suggestion after 50 completed trials
(`python -m pax_operator.sweep.vizier --bench 50`: the worker process's function, timed after a warm-up
call). Not a test: nothing is asserted; compare with the goals (<= 100 ms per trial).
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from prometheus_client.parser import text_string_to_metric_families

from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane
from pax_cluster.operator_process import OperatorProcess

NAMESPACE = "bench"
GROUP, VERSION = "pax.dev", "v1alpha1"
ALGORITHMS = ("random", "regularizedEvolution")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def sweep_body(name: str, algorithm: str, trials: int, parallel: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PaxSweep",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "experiment": "reverse_digits",
                "image": "pax/trainer:bench",
                "jobLogDir": "gs://bench/sweeps",
                "topology": {"cpu": {"hosts": 1}},
            },
            "parameters": [
                {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"},
                {"name": "num_layers", "type": "int", "min": 1, "max": 8},
            ],
            "algorithm": {"name": algorithm, "seed": 1, "populationSize": 20, "tournamentSize": 5},
            "objective": {"metric": "eval_test/loss"},
            "maxTrials": trials,
            "parallelTrials": parallel,
            "maxFailedTrials": trials,
        },
    }


def objective(params: dict[str, str]) -> float:
    return (math.log10(float(params["learning_rate"])) + 2.5) ** 2 + 0.01 * int(params["num_layers"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apiserver_counts(api: client.ApiClient) -> dict[str, float]:
    """From the apiserver's /metrics: GETs of PaxSweeps, LISTs of PaxJobs and those LISTs' response bytes."""
    text = api.rest_client.request("GET", f"{api.configuration.host}/metrics").read().decode()
    counts = {"get_paxsweeps": 0.0, "list_paxjobs": 0.0, "list_paxjobs_bytes": 0.0}
    wanted = {
        ("apiserver_request_total", "GET", "paxsweeps"): "get_paxsweeps",
        ("apiserver_request_total", "LIST", "paxjobs"): "list_paxjobs",
        ("apiserver_response_sizes_sum", "LIST", "paxjobs"): "list_paxjobs_bytes",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            counted = wanted.get((sample.name, labels.get("verb"), labels.get("resource")))
            if counted is not None and not labels.get("subresource"):
                counts[counted] += sample.value
    return counts


def follow_trials(
    custom: client.CustomObjectsApi, name: str, found: queue.Queue[dict[str, Any]], stop: threading.Event
) -> None:
    """Put each trial PaxJob of sweep `name` on `found` as it is added (a watch: no LIST of ours)."""
    version = None
    while not stop.is_set():
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            "paxjobs",
            label_selector=f"pax.dev/sweep-name={name}",
            resource_version=version,
            timeout_seconds=5,
        )
        for event in stream:
            version = event["object"]["metadata"]["resourceVersion"]
            if event["type"] == "ADDED":
                found.put(event["object"])


def run_sweep(
    custom: client.CustomObjectsApi, operator_pid: int, algorithm: str, trials: int, parallel: int
) -> dict:
    name = f"bench-{algorithm.lower()}"
    finished: set[str] = set()
    found: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    follower = threading.Thread(target=follow_trials, args=(custom, name, found, stop), daemon=True)
    follower.start()
    counts0, own_gets = apiserver_counts(custom.api_client), 0
    cpu0, start = _cpu_seconds(operator_pid), time.perf_counter()
    custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, "paxsweeps", sweep_body(name, algorithm, trials, parallel)
    )

    def finish(job: dict[str, Any]) -> None:
        params = json.loads(job["metadata"]["annotations"]["pax.dev/sweep-trial"])["params"]
        status = {
            "phase": "Succeeded",
            "progress": {"step": 10, "metrics": {"eval_test/loss": objective(params)}},
        }
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, "paxjobs", job["metadata"]["name"], {"status": status}
        )

    deadline = time.monotonic() + 3600
    largest_annotation = 0
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            sweep = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "paxsweeps", name)
            own_gets += 1
            if (sweep.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                break
            fresh = []
            while not found.empty():
                job = found.get()
                if job["metadata"]["name"] not in finished:
                    fresh.append(job)
            for job in fresh:
                finished.add(job["metadata"]["name"])
                largest_annotation = max(
                    largest_annotation, sum(len(v) for v in job["metadata"].get("annotations", {}).values())
                )
            list(pool.map(finish, fresh))
            time.sleep(0.05)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds(operator_pid) - cpu0
    stop.set()
    counts = {k: v - counts0[k] for k, v in apiserver_counts(custom.api_client).items()}
    passes = max(1, round(counts["get_paxsweeps"]) - own_gets)
    size = len(json.dumps(sweep, separators=(",", ":")))
    status = sweep.get("status") or {}
    return {
        "algorithm": algorithm,
        "phase": status.get("phase"),
        "trials": (status.get("trials") or {}).get("created"),
        "wall_s": round(wall, 1),
        "wall_ms_per_trial": round(1000 * wall / trials, 1),
        "operator_cpu_ms_per_trial": round(1000 * cpu / trials, 1),
        "sweep_object_bytes": size,
        "largest_trial_annotations_bytes": largest_annotation,
        "best": (status.get("bestTrial") or {}).get("objective"),
        "sweep_passes": passes,
        "list_paxjobs_requests": round(counts["list_paxjobs"]),
        "list_paxjobs_bytes": round(counts["list_paxjobs_bytes"]),
        "list_paxjobs_requests_per_pass": round(counts["list_paxjobs"] / passes, 3),
        "list_paxjobs_bytes_per_pass": round(counts["list_paxjobs_bytes"] / passes),
    }


def main() -> int:
    trials = _env_int("PAX_BENCH_SWEEP_TRIALS", 1000)
    parallel = _env_int("PAX_BENCH_SWEEP_PARALLEL", 20)
    with tempfile.TemporaryDirectory(prefix="pax-bench-sweep-") as tmp:
        root = Path(tmp)
        cp = ControlPlane(root / "cp").start()
        operator = None
        try:
            cp.apply(procs.DEPLOY / "crds", procs.DEPLOY / "rbac", established=procs.PAX_CRDS)
            cp.create_namespace(NAMESPACE)
            operator_kubeconfig = cp.kubeconfig_for_service_account("pax-system", "pax-operator")
            operator = OperatorProcess(
                operator_kubeconfig, root / "operator.log", namespaces=[NAMESPACE]
            ).start()
            assert operator.proc is not None
            custom = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cp.kubeconfig)))
            print(
                f"PaxSweep bench: {trials} trials, {parallel} at a time, simulated outcomes, local apiserver"
            )
            for algorithm in ALGORITHMS:
                result = run_sweep(custom, operator.proc.pid, algorithm, trials, parallel)
                print(json.dumps(result))
            print("goals: operator time per trial <= 100 ms (random, evolution); PaxSweep object < 100 KB")
            completed = _env_int("PAX_BENCH_SWEEP_BANDIT_COMPLETED", 50)
            bandit = subprocess.run(
                [sys.executable, "-m", "pax_operator.sweep.vizier", f"--bench={completed}"],
                capture_output=True,
                text=True,
                timeout=900,
                cwd=procs.REPO_ROOT,
            )
            lines = bandit.stdout.strip().splitlines() or [bandit.stderr.strip()[-500:]]
            print(f"GP-bandit (OSS Vizier, worker process) after {completed} completed trials: {lines[-1]}")
        finally:
            if operator is not None:
                operator.stop()
            cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
