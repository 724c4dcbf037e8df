"""Chaos: a 2-host lm_tiny PaxJob under 16 random disruptions still Succeeds, bit-identical to an
uninterrupted run, never with two live pods for one host, with counters matching what was injected.

Disruptions (each kind at least twice, the rest drawn at random): graceful pod delete, SIGKILL of a
trainer, SIGSEGV of a trainer (a crash: the failure budget), a policy/v1 Eviction, node loss (the process
kubelet's SIGUSR1), and the operator SIGKILLed and restarted (right after the previous disruption, before it
could react). A pod disruption is injected only once the current gang runs, so each one is exactly one
gang restart, whose recorded cause (status.lastRestart, polled) must be a preemption or a failure as the
contract classifies the kind. Restarts nobody injected (the trainer's own failures, e.g. JAX's coordination
service aborting a starved process on an overloaded machine) are printed and must be failures; the
status counters must equal injected + those. The seed is printed; PAX_CHAOS_SEED=<seed> replays the same
sequence of kinds, hosts and delays (timing on a loaded machine still varies).

Runs on its own LocalStack (node loss would kill the other e2e scenarios' pods).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from pax_cluster.kubelet import kill_container
from pax_cluster.stack import LocalStack

from tests.checkpoints import assert_bit_identical

from .conftest import Jobs, create_namespace, final_params, lm_spec, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
JOB = "chaos"
STEPS = 150
CHECKPOINT_INTERVAL = 25
DISRUPTIONS = int(os.environ.get("PAX_CHAOS_DISRUPTIONS") or 16)
POD_KINDS = ("delete", "sigkill", "crash", "evict", "nodeloss")
KINDS = (*POD_KINDS, "operator")
PREEMPTING = {"delete", "sigkill", "evict", "nodeloss"}  # the contract: SIGKILL from outside is preemption
GANG_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 300.0


def spec(log_dir: Path) -> dict[str, Any]:
    s = lm_spec(str(log_dir), checkpointIntervalSteps=CHECKPOINT_INTERVAL)
    s["overrides"] = {"num_train_steps": str(STEPS)}
    s["restartPolicy"] = {"backoffSeconds": 0, "maxPreemptions": 100, "maxFailures": 100}
    return s


@dataclass
class PodWatch:
    """Watches the namespace's pods throughout: a pod is live from creation until it is gone or terminal;
    records any moment with two live pods (distinct UIDs) for one host."""

    api: client.CoreV1Api
    namespace: str
    live: dict[str, set[str]] = field(default_factory=dict)  # host -> live pod UIDs
    violations: list[str] = field(default_factory=list)
    events: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        version = ""
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.api.list_namespaced_pod,
                    self.namespace,
                    resource_version=version,
                    timeout_seconds=30,
                    _preload_content=True,
                ):
                    if self.stop.is_set():
                        stream.stop()
                        return
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._see(event["type"], pod)
            except client.exceptions.ApiException as err:
                if err.status == 410:
                    version = ""  # expired: the next stream lists again (ADDED for every pod)
                    continue
                raise
            except urllib3.exceptions.ProtocolError:
                continue  # the apiserver cut the stream (seen in CI): resume from the last version seen

    def _see(self, kind: str, pod: client.V1Pod) -> None:
        self.events += 1
        labels = pod.metadata.labels or {}
        host = f"{labels.get('pax.dev/job-name')}/{labels.get('pax.dev/host-index')}"
        uids = self.live.setdefault(host, set())
        terminal = (pod.status.phase if pod.status else None) in ("Succeeded", "Failed")
        if kind == "DELETED" or terminal:
            uids.discard(pod.metadata.uid)
            return
        uids.add(pod.metadata.uid)
        if len(uids) > 1:
            self.violations.append(f"host {host}: live pods {sorted(uids)} at {time.strftime('%X')}")


@dataclass
class RestartLog:
    """Polls the PaxJob's status: the cause (lastRestart) of every restart attempt k → k+1."""

    jobs: Jobs
    causes: dict[int, dict[str, Any]] = field(default_factory=dict)  # attempt that ended → lastRestart
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.2):
            st = self.jobs.status(JOB)
            attempt = st.get("restartAttempt") or 0
            if attempt and attempt - 1 not in self.causes and st.get("lastRestart"):
                self.causes[attempt - 1] = st["lastRestart"]


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of its own: the chaos (node loss, operator kills) must not disturb the other scenarios."""
    with LocalStack(tmp_path_factory.mktemp("chaos-stack"), scrape_interval_s=1.0) as s:
        yield s


def _gang_running(jobs: Jobs, after: int) -> tuple[int] | None:
    """(attempt,) whose whole gang runs, once it is later than `after` (else None; a tuple: 0 is falsy)."""
    st = jobs.status(JOB)
    if st.get("phase") == "Succeeded":
        raise AssertionError(f"{JOB} Succeeded before the chaos ended: {json.dumps(st)}")
    attempt = st.get("restartAttempt") or 0
    pods = [p for p in jobs.pods(JOB) if p["metadata"]["labels"]["pax.dev/restart-attempt"] == str(attempt)]
    running = (
        st.get("phase") == "Running"
        and attempt > after
        and len(pods) == 2
        and all(
            p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp") for p in pods
        )
    )
    return (attempt,) if running else None


def _plan(rng: random.Random) -> list[str]:
    kinds = [k for k in KINDS for _ in range(2)]
    kinds += [rng.choice(KINDS) for _ in range(max(0, DISRUPTIONS - len(kinds)))]
    rng.shuffle(kinds)
    if kinds[0] == "operator":  # an operator kill follows a pod disruption
        kinds.append(kinds.pop(0))
    return kinds


def _inject(stack: LocalStack, jobs: Jobs, kind: str, host: int) -> None:
    pod = f"{JOB}-{host}"
    if kind == "delete":
        stack.kubectl("delete", "pod", pod, "-n", jobs.ns, "--grace-period=10", "--wait=false")
    elif kind in ("sigkill", "crash"):
        sig = signal.SIGKILL if kind == "sigkill" else signal.SIGSEGV
        kill_container(stack.kubelet_root, jobs.ns, pod, "trainer", sig)
    elif kind == "evict":
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": pod, "namespace": jobs.ns},
        }
        path = f"/api/v1/namespaces/{jobs.ns}/pods/{pod}/eviction"
        stack.kubectl("create", "--raw", path, "-f", "-", input=json.dumps(body))
    elif kind == "nodeloss":
        os.kill(stack.components["kubelet"].pid, signal.SIGUSR1)
    elif kind == "operator":
        stack.restart_operator()
    else:
        raise ValueError(kind)


def test_chaos_paxjob_succeeds_bit_identical(chaos_stack: LocalStack, tmp_path: Path) -> None:
    seed = int(os.environ.get("PAX_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay: PAX_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    plan = _plan(rng)
    print("plan:", " ".join(plan))
    started = time.monotonic()

    ref_jobs = Jobs(chaos_stack, create_namespace(chaos_stack, "chaos-ref"))
    ref_dir = tmp_path / "reference"
    ref_dir.mkdir()
    ref_jobs.create(JOB, spec(ref_dir))
    ref_status = ref_jobs.wait_phase(JOB, "Succeeded", timeout=JOB_TIMEOUT_S)
    assert ref_status["restarts"] == 0, ref_status
    print(f"reference run: {time.monotonic() - started:.0f}s")

    jobs = Jobs(chaos_stack, create_namespace(chaos_stack, "chaos"))
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(chaos_stack.kubeconfig)))
    pods = PodWatch(api, jobs.ns)
    watcher = threading.Thread(target=pods.run, daemon=True, name="chaos-pod-watch")
    watcher.start()
    log_dir = tmp_path / "job"
    log_dir.mkdir()
    jobs.create(JOB, spec(log_dir))
    restarts = RestartLog(jobs)
    threading.Thread(target=restarts.run, daemon=True, name="chaos-status-poll").start()
    injected: list[tuple[int, str]] = []  # (attempt disrupted, kind) of every pod disruption
    operator_kills = 0
    attempt = -1
    try:
        for i, kind in enumerate(plan):
            while kind != "operator":  # until a gang runs (and, if drawn, trained past a new checkpoint)
                (attempt,) = wait_for(
                    f"a gang after attempt {attempt} running",
                    lambda a=attempt: _gang_running(jobs, a),
                    GANG_TIMEOUT_S,
                )
                progress = jobs.status(JOB).get("progress") or {}
                late = (
                    rng.random() < 0.3
                    and (progress.get("lastCheckpointStep") or 0) < STEPS - 3 * CHECKPOINT_INTERVAL
                )
                if late:  # let it train past another checkpoint: the next gang resumes mid-run
                    done = progress.get("lastCheckpointStep") or 0

                    def checkpointed_or_restarted(d: int = done, a: int = attempt) -> bool:
                        st = jobs.status(JOB)
                        return ((st.get("progress") or {}).get("lastCheckpointStep") or 0) > d or (
                            st.get("restartAttempt") or 0
                        ) != a

                    wait_for("a new checkpoint", checkpointed_or_restarted, 2 * GANG_TIMEOUT_S)
                    if (jobs.status(JOB).get("restartAttempt") or 0) != attempt:
                        continue  # the trainer restarted on its own: wait for that gang instead
                time.sleep(rng.uniform(0.2, 3.0))
                break
            host = rng.randrange(2)
            now = jobs.status(JOB)
            step = (now.get("progress") or {}).get("step")
            if kind != "operator":
                attempt = now.get("restartAttempt") or 0  # the gang this disruption hits
            print(f"[{time.monotonic() - started:4.0f}s] {i + 1}/{len(plan)} {kind} host {host} step {step}")
            _inject(chaos_stack, jobs, kind, host)
            if kind == "operator":
                operator_kills += 1
            else:
                injected.append((attempt, kind))
        status = jobs.wait_phase(JOB, "Succeeded", timeout=JOB_TIMEOUT_S)
    finally:
        pods.stop.set()
        restarts.stop.set()
    print(
        f"injected {injected} and {operator_kills} operator kills; final status counters: "
        f"restarts={status['restarts']} preemptions={status['preemptions']} failures={status['failures']}; "
        f"{pods.events} pod events watched; total {time.monotonic() - started:.0f}s"
    )
    assert not pods.violations, pods.violations
    assert pods.events > 0
    # Every pod disruption is exactly one restart, classified as the contract says.
    for disrupted, kind in injected:
        cause = restarts.causes.get(disrupted)
        assert cause is not None, f"no restart recorded after attempt {disrupted} ({kind}): {restarts.causes}"
        want = "Preempted" if kind in PREEMPTING else "Failed"
        assert cause["outcome"] == want, (disrupted, kind, cause)
    # Restarts nobody injected (the trainer itself failing, e.g. JAX's coordination service aborting a
    # starved process on an overloaded machine) are reported, and may only be failures, never preemptions.
    spontaneous = {k: c for k, c in restarts.causes.items() if k not in dict(injected)}
    if spontaneous:
        print(f"restarts not injected (the trainer's own failures): {spontaneous}")
    assert all(c["outcome"] == "Failed" for c in spontaneous.values()), spontaneous
    preemptions = sum(1 for _, kind in injected if kind in PREEMPTING)
    failures = sum(1 for _, kind in injected if kind == "crash") + len(spontaneous)
    assert (status["preemptions"], status["failures"]) == (preemptions, failures), (status, injected)
    assert status["restarts"] == status["restartAttempt"] == len(restarts.causes) == preemptions + failures
    ref_step, reference = final_params(ref_dir)
    step, params = final_params(log_dir)
    print(f"final checkpoint step {step}, reference {ref_step} (num_train_steps {STEPS})")
    assert step == ref_step
    assert_bit_identical(params, reference)
