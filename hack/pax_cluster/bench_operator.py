"""`make bench-operator`: the PaxJob operator against the apiserver's own ceiling, on this machine.

Each arm runs on a fresh local control plane (etcd + kube-apiserver + controller-manager; no scheduler,
no kubelet: pods are created, never run). N PaxJobs x 4 hosts are created at once; the clock stops when
every pod, Service and NetworkPolicy of every job exists (counted from watches).

- ours: `python -m pax_operator` as a subprocess under its own ServiceAccount (as the tests run it);
- direct: a concurrent client (16 threads, raw JSON, kept-alive connections) creating the same objects
  itself, copied from what the operator made: the apiserver's ceiling on this box;
- base (optional, PAX_BENCH_BASE=<checkout of an older commit>): that checkout's operator, same harness.

Reported per arm: seconds, ratio to direct, operator and apiserver CPU seconds (from /proc), operator peak
RSS (VmHWM) and RSS growth per job, the operator's apiserver requests per job by verb (audit log, only the
operator's ServiceAccount; watches counted when they start), and its requests/s while the N jobs sit idle.
Then the recovery benchmark: 100 Running jobs plus one 4-host job preempted again and again (backoff 0);
latency from the preempted pod's status being visible to all the replacement gang's pods existing.

Environment: PAX_BENCH_SIZES (default 100,300,1000), PAX_BENCH_IDLE_S (30), PAX_BENCH_PREEMPTIONS (20),
PAX_BENCH_BACKGROUND (100), PAX_BENCH_BASE, PAX_BENCH_OPERATOR_ARGS (extra flags for our operator),
PAX_BENCH_REPEATS (1: rounds per size, arms interleaved; more print the median ratio over the rounds).
Not a test: nothing is asserted; compare the ratios (measured in the same run) with the goals.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane, read_state
from pax_cluster.kubelet.common import now
from pax_cluster.operator_process import OperatorProcess
from pax_cluster.podenv import reported_status

OPERATOR_NS, OPERATOR_SA = "pax-system", "pax-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
NAMESPACE = "bench"
GROUP_PATH = "/apis/pax.dev/v1alpha1"
HOSTS = 4
THREADS = 16
KINDS = {  # what a PaxJob owns: (list/watch path in the namespace, objects per job)
    "pods": ("/api/v1/namespaces/{ns}/pods", HOSTS),
    "services": ("/api/v1/namespaces/{ns}/services", 1),
    "networkpolicies": ("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", 1),
}
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    users: ["{OPERATOR_USER}"]
  - level: None
"""
SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def paxjob(name: str, backoff_seconds: int = 10) -> dict[str, Any]:
    """The bench's PaxJob: a HOSTS-host lm_tiny gang (nothing runs it: pods are reported by hand)."""
    spec = {
        "experiment": "lm_tiny",
        "image": "pax/trainer:bench",
        "jobLogDir": "gs://pax-bench/runs",  # no volume needed (a local path must be on one)
        "topology": {"cpu": {"hosts": HOSTS}},
        "restartPolicy": {"backoffSeconds": backoff_seconds},
    }
    return {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxJob", "metadata": {"name": name}, "spec": spec}


def job_name(i: int) -> str:
    return f"pj{i:05d}"


# -- the cluster ----------------------------------------------------------------------------------------
class Cluster:
    """A fresh control plane with the CRD, RBAC, the operator's kubeconfig and an audit log of its calls."""

    def __init__(self, root: Path, deploy: Path = procs.DEPLOY) -> None:
        self.root = root
        self.deploy = deploy  # an older checkout's operator runs with its own CRD and RBAC
        root.mkdir(parents=True, exist_ok=True)
        (root / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.audit_log = root / "audit.log"
        self.cp = ControlPlane(
            root / "cp",
            extra_apiserver_args=[
                f"--audit-policy-file={root / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-maxsize=0",
                "--audit-log-format=json",
            ],
        )
        self._local = threading.local()

    def __enter__(self) -> Cluster:
        self.cp.start()
        self.cp.apply(
            self.deploy / "crds/pax.dev_paxjobs.yaml", self.deploy / "rbac", established=("paxjobs.pax.dev",)
        )
        self.operator_kubeconfig = self.cp.kubeconfig_for_service_account(OPERATOR_NS, OPERATOR_SA)
        self.post("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        procs.wait_for(
            "the namespace's default ServiceAccount",
            lambda: (
                self.session()
                .get(self.url(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"), timeout=10)
                .status_code
                == 200
            ),
            timeout=60,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.cp.stop()

    def url(self, path: str) -> str:
        return f"{self.cp.server}{path}"

    def session(self) -> requests.Session:
        """One kept-alive session per thread."""
        if getattr(self._local, "session", None) is None:
            self._local.session = self.cp.admin_session()
        return self._local.session

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.session().post(self.url(path), json=body, timeout=60)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    def pid(self, name: str) -> int:
        state = read_state(self.cp.root) or {"procs": []}
        return next(p["pid"] for p in state["procs"] if p["name"] == name)

    def create_jobs(self, names: list[str], backoff_seconds: int = 10) -> list[dict[str, Any]]:
        def create(name: str) -> dict[str, Any]:
            return self.post(f"{GROUP_PATH}/namespaces/{NAMESPACE}/paxjobs", paxjob(name, backoff_seconds))

        with ThreadPoolExecutor(THREADS) as pool:
            return list(pool.map(create, names))

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def operator_requests(self, start: int, end: int | None = None) -> Counter[str]:
        """The operator's requests by verb between two audit-log offsets (distinct audit IDs)."""
        with self.audit_log.open("rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        seen: dict[str, str] = {}
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("user", {}).get("username") == OPERATOR_USER:
                    seen.setdefault(event["auditID"], event["verb"])
        return Counter(seen.values())


class AddedCounter:
    """Counts ADDED events of one kind in the bench namespace from a watch (the objects are not parsed)."""

    def __init__(self, cluster: Cluster, kind: str, selector: str = "") -> None:
        self.cluster, self.kind, self.selector = cluster, kind, selector
        self.count = 0
        self.times: dict[str, float] = {}  # name -> when first ADDED (only with `record`)
        self.record = False
        self._stop = threading.Event()
        path = KINDS[kind][0].format(ns=NAMESPACE)
        session = cluster.cp.admin_session()
        listing = session.get(cluster.url(path), params={"limit": 1, "labelSelector": selector}, timeout=60)
        version = listing.json()["metadata"]["resourceVersion"]
        self._response = session.get(
            cluster.url(path),
            params={
                "watch": "1",
                "resourceVersion": version,
                "labelSelector": selector,
                "timeoutSeconds": 3600,
            },
            stream=True,
            timeout=(10, 3600),
        )
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{kind}")
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(requests.RequestException, AttributeError, ValueError):
            for line in self._response.iter_lines(chunk_size=65536):
                if self._stop.is_set():
                    return
                if line.startswith(b'{"type":"ADDED"'):
                    self.count += 1
                    if self.record:
                        event = json.loads(line)["object"]["metadata"]
                        attempt = event.get("labels", {}).get("pax.dev/restart-attempt", "")
                        self.times.setdefault(f"{event['name']}@{attempt}", time.monotonic())

    def close(self) -> None:
        """Stop counting; the connection ends with the control plane (closing it under the reading thread
        can block)."""
        self._stop.set()


# -- processes ------------------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


@dataclass
class Operator:
    """An operator subprocess (ours, or an older checkout's through PYTHONPATH), killed on the way out."""

    cluster: Cluster
    log: Path
    base: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    process: OperatorProcess | None = None

    def __enter__(self) -> Operator:
        env: dict[str, str] = {}
        if self.base is not None:  # the venv's editable install points at this checkout: PYTHONPATH first
            paths = [
                str(self.base / "operator"),
                str(self.base / "contract"),
                os.environ.get("PYTHONPATH", ""),
            ]
            env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        where = subprocess.run(
            [sys.executable, "-c", "import pax_operator; print(pax_operator.__file__)"],
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        print(f"    operator code: {where}", flush=True)
        self.process = OperatorProcess(
            self.cluster.operator_kubeconfig,
            self.log,
            namespaces=[NAMESPACE],
            scrape_interval_s=None,
            extra_args=self.extra_args,
            extra_env=env,
            cwd=self.base or procs.REPO_ROOT,
        ).start(timeout_s=60)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid


# -- the scale arms -------------------------------------------------------------------------------------
@dataclass
class Result:
    arm: str
    n: int
    seconds: float | None  # None: did not finish within the bound
    operator_cpu: float | None = None
    apiserver_cpu: float = 0.0
    etcd_cpu: float = 0.0
    peak_rss_mb: float | None = None
    rss_per_job_kb: float | None = None
    requests: Counter[str] = field(default_factory=Counter)
    idle_rps: float | None = None
    round: int = 0  # PAX_BENCH_REPEATS: which repetition (ratios compare arms of the same round)


def _wait_all(counters: dict[str, AddedCounter], n: int, bound: float) -> float | None:
    start = time.monotonic()
    want = {kind: per_job * n for kind, (_, per_job) in KINDS.items()}
    while time.monotonic() - start < bound:
        if all(counters[k].count >= want[k] for k in KINDS):
            return time.monotonic()
        time.sleep(0.05)
    print(f"    bound {bound:.0f}s reached: { ({k: c.count for k, c in counters.items()}) } of {want}")
    return None


def _bound(n: int) -> float:
    return 60.0 + 0.4 * n


def templates_from(cluster: Cluster, name: str) -> dict[str, list[dict[str, Any]]]:
    """What the operator made for job `name` (server fields stripped): the direct client's bodies."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, (path, _) in KINDS.items():
        items = (
            cluster.session()
            .get(
                cluster.url(path.format(ns=NAMESPACE)),
                params={"labelSelector": f"pax.dev/job-name={name}"},
                timeout=60,
            )
            .json()
        )
        for item in items["items"]:
            item.pop("status", None)
            for key in SERVER_FIELDS:
                item["metadata"].pop(key, None)
            if item["spec"].get("clusterIP") != "None":  # headless stays headless (no IP to allocate)
                item["spec"].pop("clusterIP", None)
                item["spec"].pop("clusterIPs", None)
        out[kind] = items["items"]
    return out


def operator_arm(
    root: Path, n: int, label: str, base: Path | None, extra: list[str], idle_s: float
) -> tuple[Result, dict[str, list[dict[str, Any]]]]:
    names = [job_name(i) for i in range(n)]
    deploy = (base or procs.REPO_ROOT) / "deploy"
    with Cluster(root, deploy) as cluster, Operator(cluster, root / "operator.log", base, extra) as op:
        counters = {kind: AddedCounter(cluster, kind) for kind in KINDS}
        time.sleep(2.0)  # the operator's initial listing is done
        api, etcd = cluster.pid("kube-apiserver"), cluster.pid("etcd")
        rss0 = memory_kb(op.pid, "VmRSS")
        cpu0 = (cpu_seconds(op.pid), cpu_seconds(api), cpu_seconds(etcd))
        audit0 = cluster.audit_offset()
        start = time.monotonic()
        cluster.create_jobs(names)
        end = _wait_all(counters, n, _bound(n))
        cpu1 = (cpu_seconds(op.pid), cpu_seconds(api), cpu_seconds(etcd))
        result = Result(
            label,
            n,
            None if end is None else end - start,
            operator_cpu=cpu1[0] - cpu0[0],
            apiserver_cpu=cpu1[1] - cpu0[1],
            etcd_cpu=cpu1[2] - cpu0[2],
        )
        # Settle (status writes after the last pod), then the idle window.
        _settle(cluster, bound=60.0)
        audit1 = cluster.audit_offset()
        result.requests = cluster.operator_requests(audit0, audit1)
        time.sleep(idle_s)
        idle = cluster.operator_requests(audit1)
        result.idle_rps = sum(idle.values()) / idle_s
        if idle:
            print(f"    {label}: requests while idle: {dict(idle)}", flush=True)
        result.peak_rss_mb = memory_kb(op.pid, "VmHWM") / 1024
        result.rss_per_job_kb = (memory_kb(op.pid, "VmRSS") - rss0) / n
        templates = templates_from(cluster, names[0])
        for counter in counters.values():
            counter.close()
    return result, templates


def _settle(cluster: Cluster, bound: float, quiet_s: float = 3.0) -> None:
    """Wait until the operator has made no write for `quiet_s` seconds (bounded)."""
    deadline = time.monotonic() + bound
    offset = cluster.audit_offset()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now_offset = cluster.audit_offset()
        writes = cluster.operator_requests(offset, now_offset)
        offset = now_offset
        if any(writes[v] for v in ("create", "update", "patch", "delete")):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return


def direct_arm(root: Path, n: int, templates: dict[str, list[dict[str, Any]]]) -> Result:
    """Create the same PaxJobs and, per job, the operator's objects with the job's name and uid."""
    model = {kind: json.dumps(items) for kind, items in templates.items()}
    first = job_name(0)
    with Cluster(root) as cluster:
        counters = {kind: AddedCounter(cluster, kind) for kind in KINDS}
        api, etcd = cluster.pid("kube-apiserver"), cluster.pid("etcd")
        cpu0 = (cpu_seconds(api), cpu_seconds(etcd))
        paths = {kind: path.format(ns=NAMESPACE) for kind, (path, _) in KINDS.items()}

        def one(i: int) -> None:
            name = job_name(i)
            created = cluster.post(f"{GROUP_PATH}/namespaces/{NAMESPACE}/paxjobs", paxjob(name))
            uid = created["metadata"]["uid"]
            for kind in ("networkpolicies", "services", "pods"):
                items = json.loads(
                    re.sub(r'"uid": "[^"]*"', f'"uid": "{uid}"', model[kind].replace(first, name))
                )
                for item in items:
                    cluster.post(paths[kind], item)

        start = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, range(n)))
        end = _wait_all(counters, n, _bound(n))
        cpu1 = (cpu_seconds(api), cpu_seconds(etcd))
        for counter in counters.values():
            counter.close()
    return Result(
        "direct",
        n,
        None if end is None else end - start,
        apiserver_cpu=cpu1[0] - cpu0[0],
        etcd_cpu=cpu1[1] - cpu0[1],
    )


# -- recovery -------------------------------------------------------------------------------------------
BENCH_CONTAINER = {"name": "trainer", "image": "pax/trainer:bench"}


def _kubelet_patch(cluster: Cluster, pod: str, phase: str, exit_code: int | None = None) -> None:
    """Report a pod's status as a kubelet would (nothing runs it here)."""
    # a scrape of 127.0.0.2 finds nothing listening and returns at once
    status = reported_status(phase, BENCH_CONTAINER, "127.0.0.2", now(), exit_code=exit_code)
    r = cluster.session().patch(
        cluster.url(f"/api/v1/namespaces/{NAMESPACE}/pods/{pod}/status"),
        data=json.dumps({"status": status}),
        headers={"Content-Type": "application/merge-patch+json"},
        timeout=60,
    )
    if r.status_code != 200:
        raise RuntimeError(f"patch {pod}: {r.status_code} {r.text[:300]}")


def _job_status(cluster: Cluster, name: str) -> dict[str, Any]:
    r = cluster.session().get(cluster.url(f"{GROUP_PATH}/namespaces/{NAMESPACE}/paxjobs/{name}"), timeout=60)
    return r.json().get("status") or {}


def _run_gang(cluster: Cluster, name: str, attempt: int) -> None:
    """Mark the job's 4 pods Running and wait until the operator says Running at `attempt`."""
    for host in range(HOSTS):
        _kubelet_patch(cluster, f"{name}-{host}", "Running")
    procs.wait_for(
        f"{name} Running at attempt {attempt}",
        lambda: (
            (s := _job_status(cluster, name)).get("phase") == "Running" and s.get("restartAttempt") == attempt
        ),
        timeout=120,
    )


def recovery(
    root: Path, label: str, base: Path | None, extra: list[str], background: int, preemptions: int
) -> list[float]:
    target = "target"
    latencies: list[float] = []
    with (
        Cluster(root, (base or procs.REPO_ROOT) / "deploy") as cluster,
        Operator(cluster, root / "operator.log", base, extra),
    ):
        names = [job_name(i) for i in range(background)]
        pods = AddedCounter(cluster, "pods")
        cluster.create_jobs(names)
        procs.wait_for(
            "background pods", lambda: pods.count >= HOSTS * background, timeout=_bound(background)
        )
        with ThreadPoolExecutor(THREADS) as pool:
            list(
                pool.map(
                    lambda p: _kubelet_patch(cluster, p, "Running"),
                    [f"{n}-{h}" for n in names for h in range(HOSTS)],
                )
            )
        gang = AddedCounter(cluster, "pods", selector=f"pax.dev/job-name={target}")
        gang.record = True
        cluster.create_jobs([target], backoff_seconds=0)
        procs.wait_for("the target's pods", lambda: gang.count >= HOSTS, timeout=60)
        for attempt in range(preemptions):
            procs.wait_for(
                "the target's gang",
                lambda a=attempt: all(f"{target}-{h}@{a}" in gang.times for h in range(HOSTS)),
                timeout=60,
            )
            _run_gang(cluster, target, attempt)
            _kubelet_patch(cluster, f"{target}-{attempt % HOSTS}", "Failed", exit_code=143)
            preempted = time.monotonic()
            procs.wait_for(
                "the replacement gang",
                lambda a=attempt: all(f"{target}-{h}@{a + 1}" in gang.times for h in range(HOSTS)),
                timeout=60,
                interval=0.01,
            )
            latencies.append(max(gang.times[f"{target}-{h}@{attempt + 1}"] for h in range(HOSTS)) - preempted)
        status = _job_status(cluster, target)
        print(
            f"    {label}: target preemptions={status.get('preemptions')} restarts={status.get('restarts')}"
        )
        gang.close()
        pods.close()
    return latencies


# -- report ---------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result]) -> None:
    direct = {(r.n, r.round): r.seconds for r in results if r.arm == "direct"}
    header = (
        "| arm | N | seconds | x direct | operator CPU s | apiserver CPU s | etcd CPU s | peak RSS MB "
        "| RSS/job kB | requests/job | idle req/s | requests by verb |"
    )
    print("\n" + header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in results:
        ratio = r.seconds / direct[r.n, r.round] if r.seconds and direct.get((r.n, r.round)) else None
        per_job = sum(r.requests.values()) / r.n if r.requests else None
        verbs = ", ".join(f"{v} {c / r.n:.2f}" for v, c in sorted(r.requests.items())) or "-"
        print(
            f"| {r.arm} | {r.n} | {_fmt(r.seconds)} | {_fmt(ratio, '.2f')} | {_fmt(r.operator_cpu)} | "
            f"{_fmt(r.apiserver_cpu)} | {_fmt(r.etcd_cpu)} | {_fmt(r.peak_rss_mb, '.0f')} | "
            f"{_fmt(r.rss_per_job_kb, '.0f')} | {_fmt(per_job, '.2f')} | {_fmt(r.idle_rps, '.2f')} | "
            f"{verbs} |"
        )
    print(flush=True)


def report_rounds(results: list[Result]) -> None:
    """Per arm and N over the rounds: the median, lowest and highest of the × direct ratios."""
    direct = {(r.n, r.round): r.seconds for r in results if r.arm == "direct"}
    ratios: dict[tuple[str, int], list[float]] = {}
    for r in results:
        reference = direct.get((r.n, r.round))
        if r.arm != "direct" and r.seconds and reference:
            ratios.setdefault((r.arm, r.n), []).append(r.seconds / reference)
    print("\n| arm | N | rounds | x direct median | lowest | highest |\n|---|---|---|---|---|---|")
    for (arm, n), values in ratios.items():
        print(
            f"| {arm} | {n} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | "
            f"{max(values):.2f} |"
        )
    print(flush=True)


def main() -> int:
    # PAX_BENCH_SIZES=0: only the recovery benchmark.
    sizes = [n for n in map(int, (os.environ.get("PAX_BENCH_SIZES") or "100,300,1000").split(",")) if n > 0]
    idle_s = float(os.environ.get("PAX_BENCH_IDLE_S") or 30)
    base = Path(os.environ["PAX_BENCH_BASE"]).resolve() if os.environ.get("PAX_BENCH_BASE") else None
    extra = shlex.split(os.environ.get("PAX_BENCH_OPERATOR_ARGS") or "")
    background = _env_int("PAX_BENCH_BACKGROUND", 100)
    preemptions = _env_int("PAX_BENCH_PREEMPTIONS", 20)
    repeats = max(1, _env_int("PAX_BENCH_REPEATS", 1))
    arms: list[tuple[str, Path | None, list[str]]] = [("ours", None, extra)]
    if base is not None:
        arms.append(("base", base, []))
    results: list[Result] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pax-bench-operator-") as tmp:
        root = Path(tmp)
        for n in sizes:
            for rnd in range(repeats):  # arms interleaved: a drifting machine load hits every arm alike
                templates: dict[str, list[dict[str, Any]]] = {}
                for label, checkout, flags in arms:
                    print(f"== {label}, N={n}, round {rnd + 1}/{repeats}", flush=True)
                    where = root / f"{label}-{n}-{rnd}"
                    result, made = operator_arm(where, n, label, checkout, flags, idle_s)
                    result.round = rnd
                    templates = templates if label != "ours" else made
                    results.append(result)
                    report([result])
                print(f"== direct, N={n}, round {rnd + 1}/{repeats}", flush=True)
                results.append(direct_arm(root / f"direct-{n}-{rnd}", n, templates))
                results[-1].round = rnd
                report(results)
        for label, checkout, flags in arms if preemptions > 0 else []:  # PAX_BENCH_PREEMPTIONS=0: none
            print(
                f"== recovery, {label}: {preemptions} preemptions, {background} other Running jobs",
                flush=True,
            )
            latencies = recovery(root / f"recovery-{label}", label, checkout, flags, background, preemptions)
            q = statistics.quantiles(latencies, n=20, method="inclusive")
            print(
                f"    {label}: recovery p50 {statistics.median(latencies):.2f}s  p95 {q[18]:.2f}s  "
                f"max {max(latencies):.2f}s over {len(latencies)} preemptions",
                flush=True,
            )
    report(results)
    if repeats > 1:
        report_rounds(results)
    print(f"bench-operator took {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
