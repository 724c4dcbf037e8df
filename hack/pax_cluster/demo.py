"""`make demo`: a 2-host PaxJob trains, is preempted mid-run, restarts as a gang, resumes, succeeds.

Everything runs locally: a real kube-apiserver + etcd + controller-manager, the PaxJob operator (as its
own ServiceAccount, with the RBAC from deploy/), and the process kubelet that runs pods as processes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pax_cluster.procs import REPO_ROOT, log_tail
from pax_cluster.stack import LocalStack

NAMESPACE = "pax-demo"
JOB = "lm-tiny"
DEADLINE_S = 600.0
POLL_S = 2.0
PREEMPT_GRACE_S = 30


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(step: int, total: int, text: str) -> None:
    say(f"\n\033[1m== [{step}/{total}] {text}\033[0m")


DEMO_MARKER = ".pax-demo-root"  # written into every demo root: only such a folder (or the default) is emptied


def demo_args(argv: list[str] | None, prog: str, doc: str, **knobs: int) -> argparse.Namespace:
    """A demo's flags: --root (default .cluster/<prog without pax->, emptied here and made absolute; any
    other non-empty folder is emptied only if an earlier demo marked it), and one integer flag per knob
    (steps=600 -> --steps, default 600)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    default_root = REPO_ROOT / ".cluster" / prog.removeprefix("pax-")
    parser.add_argument("--root", type=Path, default=default_root)
    for name, default in knobs.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    # Only a demo's own folder: anything else under .cluster is `make cluster-up`'s (etcd, the GCS
    # emulator's objects, job volumes), which a demo must never empty.
    ours = args.root == default_root.resolve() or (args.root / DEMO_MARKER).exists()
    if args.root.exists() and not ours and any(args.root.iterdir()):
        parser.error(
            f"--root {args.root}: not empty and not a demo's root (no {DEMO_MARKER}); not emptying it"
        )
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    (args.root / DEMO_MARKER).touch()
    return args


def paxjob(job_log_dir: Path, steps: int, checkpoint_every: int) -> dict[str, Any]:
    """The demo's PaxJob: lm_tiny on 2 CPU hosts, job_log_dir on a volume every host mounts."""
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxJob",
        "metadata": {"name": JOB, "namespace": NAMESPACE},
        "spec": {
            "experiment": "lm_tiny",
            "image": "pax-on-kubernetes/trainer:0.1.0",
            "jobLogDir": str(job_log_dir),
            "topology": {"cpu": {"hosts": 2}},
            "overrides": {"num_train_steps": str(steps), "decode_interval_steps": str(steps)},
            "checkpointIntervalSteps": checkpoint_every,
            "tensorboard": {"enabled": True},
            "restartPolicy": {"maxPreemptions": 10, "maxFailures": 2, "backoffSeconds": 2},
            "podTemplate": {
                # A shared volume (a PVC or gs:// in a cloud): here a host directory every pod mounts.
                "volumes": [{"name": "job-log-dir", "hostPath": {"path": str(job_log_dir)}}],
                "volumeMounts": [{"name": "job-log-dir", "mountPath": str(job_log_dir)}],
            },
        },
    }


def preemption_lines(log: str) -> tuple[list[str], bool]:
    """A preempted trainer's log: its lines about the SIGTERM and the preemption, and whether it has
    logged its exit yet."""
    lines = [line for line in log.splitlines() if "SIGTERM" in line or "preempt" in line.lower()]
    return lines, any("exiting" in line for line in lines)


class Demo:
    """Drives the stack through the story and narrates it."""

    def __init__(self, root: Path, steps: int, checkpoint_every: int, preempt_at: int) -> None:
        self.root = root
        self.job_log_dir = root / "jobs" / JOB
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.preempt_at = preempt_at
        self.stack = LocalStack(root / "stack", namespaces=(NAMESPACE,), scrape_interval_s=1.0)
        self.seen_events: set[str] = set()
        self.last_line = ""

    # -- reading the cluster with the real kubectl --------------------------------------------------
    def job(self) -> dict[str, Any]:
        return json.loads(self.stack.kubectl("get", "paxjob", JOB, "-n", NAMESPACE, "-o", "json"))

    def pods(self) -> list[dict[str, Any]]:
        out = self.stack.kubectl(
            "get", "pods", "-n", NAMESPACE, "-l", f"pax.dev/job-name={JOB}", "-o", "json"
        )
        return json.loads(out)["items"]

    def print_new_events(self) -> None:
        out = self.stack.kubectl(
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            f"involvedObject.name={JOB}",
            "--sort-by=.metadata.creationTimestamp",
            "-o",
            "json",
            check=False,
        )
        for event in json.loads(out or '{"items": []}')["items"]:
            key = event["metadata"]["uid"]
            if key not in self.seen_events:
                self.seen_events.add(key)
                say(f"   event  {event['type']:<7} {event['reason']:<18} {event['message']}")

    def print_progress(self, job: dict[str, Any]) -> None:
        status = job.get("status") or {}
        progress = status.get("progress") or {}
        loss = (progress.get("metrics") or {}).get("train/loss")
        line = (
            f"   status phase={status.get('phase', '-'):<10} attempt={status.get('restartAttempt', 0)} "
            f"step={progress.get('step', '-')}/{self.steps} "
            f"loss={'-' if loss is None else f'{loss:.3f}'} "
            f"checkpoint={progress.get('lastCheckpointStep', '-')} "
            f"steps/s={progress.get('stepsPerSecond', '-')}"
        )
        if line != self.last_line:
            say(line)
            self.last_line = line

    def wait(self, what: str, done: Any, timeout: float = DEADLINE_S) -> dict[str, Any]:
        """Narrate until done(job) is true; bounded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job()
            self.print_new_events()
            self.print_progress(job)
            if done(job):
                return job
            phase = (job.get("status") or {}).get("phase")
            if phase == "Failed":
                raise SystemExit(f"demo: the PaxJob failed while waiting for {what}:\n{self.diagnostics()}")
            time.sleep(POLL_S)
        raise SystemExit(f"demo: timed out waiting for {what}\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        pods_root = self.stack.kubelet_root / "pods" / NAMESPACE
        parts = [f"--- operator log ---\n{log_tail(self.stack.operator_log, 20)}"]
        for log in sorted(pods_root.glob("*/trainer.log")):
            parts.append(f"--- {log.parent.name} trainer log ---\n{log_tail(log, 15)}")
        return "\n".join(parts)

    def trainer_log(self, pod: str) -> Path:
        return self.stack.kubelet_root / "pods" / NAMESPACE / pod / "trainer.log"

    # -- the story ----------------------------------------------------------------------------------
    def run(self) -> None:
        total = 6
        banner(
            1, total, "Starting a local Kubernetes control plane, the PaxJob operator and a process kubelet"
        )
        t0 = time.monotonic()
        self.stack.start()
        version = self.stack.control_plane.version().get("gitVersion", "?")
        say(
            f"   kube-apiserver {version} + etcd + kube-controller-manager on 127.0.0.1"
            f" ({time.monotonic() - t0:.1f} s)"
        )
        say("   operator: python -m pax_operator as ServiceAccount pax-system/pax-operator (deploy/rbac)")
        say("   node:     process kubelet 'pax-local' (pods run as local processes, each with its own IP)")
        say(f"   kubectl:  export KUBECONFIG={self.stack.kubeconfig}")

        banner(2, total, f"Applying PaxJob {NAMESPACE}/{JOB}: lm_tiny on 2 CPU hosts, {self.steps} steps")
        self.stack.control_plane.create_namespace(NAMESPACE)
        self.job_log_dir.mkdir(parents=True, exist_ok=True)
        manifest = paxjob(self.job_log_dir, self.steps, self.checkpoint_every)
        say(f"   jobLogDir={self.job_log_dir}  checkpoint every {self.checkpoint_every} steps")
        say("   $ kubectl apply -f paxjob.yaml")
        say("   " + self.stack.kubectl("apply", "-f", "-", input=json.dumps(manifest)).strip())

        banner(3, total, "Training: the operator scrapes host 0's /metrics into status.progress")
        job = self.wait("the gang to run", lambda j: (j.get("status") or {}).get("phase") == "Running")
        self.show_pods()
        self.show_tensorboard()
        job = self.wait(
            f"step {self.preempt_at}",
            lambda j: ((j.get("status") or {}).get("progress") or {}).get("step", 0) >= self.preempt_at,
        )

        banner(
            4,
            total,
            f"Preempting host 1 as a spot VM reclaim would: pod deleted, {PREEMPT_GRACE_S} s grace period",
        )
        grace = f"--grace-period={PREEMPT_GRACE_S}"
        say(f"   $ kubectl delete pod {JOB}-1 {grace}")
        self.stack.kubectl("delete", "pod", f"{JOB}-1", "-n", NAMESPACE, grace, "--wait=false")
        job = self.wait("the gang restart", lambda j: (j.get("status") or {}).get("restartAttempt", 0) >= 1)
        self._show_preempted_host()

        banner(5, total, "The new gang (attempt 1) resumes from the last committed checkpoint")
        job = self.wait("the new gang to run", lambda j: (j.get("status") or {}).get("phase") == "Running")
        self._show_resume()
        job = self.wait("the job to finish", lambda j: (j.get("status") or {}).get("phase") in ("Succeeded",))

        banner(6, total, "Succeeded")
        say(self.stack.kubectl("get", "paxjob", "-n", NAMESPACE))
        self.show_result(job)

    def show_pods(self) -> None:
        say("   $ kubectl get pods -o wide")
        out = self.stack.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide")
        say("\n".join("   " + line for line in out.splitlines()))

    def show_tensorboard(self) -> None:
        host0 = next((p for p in self.pods() if p["metadata"]["name"] == f"{JOB}-0"), None)
        ip = ((host0 or {}).get("status") or {}).get("podIP")
        if not ip:
            return
        url = f"http://{ip}:6006"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with opener.open(f"{url}/data/runs", timeout=2) as response:
                    runs = json.loads(response.read())
                say(f"   TensorBoard sidecar (host 0) serves {url}  — /data/runs = {runs}")
                return
            except OSError:
                time.sleep(1)
        say(f"   TensorBoard sidecar (host 0) at {url} did not answer within 30 s")

    def _show_preempted_host(self) -> None:
        """Host 1's own account (attempt 0): its SIGTERM and exit lines. The operator restarts the gang as
        soon as the pod is deleted, while host 1 still saves within its grace period: wait for its exit."""
        log = self.trainer_log(f"{JOB}-1")
        deadline = time.monotonic() + PREEMPT_GRACE_S + 10
        while True:
            lines, exited = preemption_lines(log.read_text(errors="replace") if log.exists() else "")
            if exited or time.monotonic() > deadline:
                break
            time.sleep(1)
        for line in lines:
            say(f"   host 1 (attempt 0): {line.strip()[-110:]}")
        if not exited:
            say(f"   host 1 (attempt 0) logged no exit within {PREEMPT_GRACE_S + 10} s of its deletion")

    def _show_resume(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            log = self.trainer_log(f"{JOB}-0")
            text = log.read_text(errors="replace") if log.exists() else ""
            lines = [line for line in text.splitlines() if "resum" in line.lower()]
            if lines:
                say(f"   host 0 (attempt 1): {lines[-1].strip()[-120:]}")
                return
            time.sleep(1)

    def show_result(self, job: dict[str, Any]) -> None:
        status = job["status"]
        progress = status.get("progress") or {}
        say(
            f"   restarts={status.get('restarts')} preemptions={status.get('preemptions')} "
            f"failures={status.get('failures')} steps lost={progress.get('stepsLost')}"
        )
        for condition in status.get("conditions", []):
            say(
                f"   condition {condition['type']:<11}={condition['status']:<5} "
                f"{condition.get('reason', '')}: {condition.get('message', '')}"
            )
        metrics = progress.get("metrics") or {}
        if metrics:
            say("   final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
        decodes = sorted((self.job_log_dir / "decoder_out").glob("*.jsonl"))
        if decodes:
            say(f"   sample decodes ({decodes[-1]}):")
            for line in decodes[-1].read_text().splitlines()[:3]:
                record = json.loads(line)
                say("     " + json.dumps(record)[:160])
        checkpoints = sorted(p.name for p in (self.job_log_dir / "checkpoints").glob("checkpoint_*"))
        say(f"   checkpoints: {', '.join(checkpoints)}")
        say(
            f"   summaries:   {self.job_log_dir / 'summaries'}"
            f" (view: .venv/bin/tensorboard --logdir {self.job_log_dir / 'summaries'})"
        )


def main(argv: list[str] | None = None) -> int:
    args = demo_args(argv, "pax-demo", __doc__, steps=600, checkpoint_every=100, preempt_at=250)
    demo = Demo(args.root, args.steps, args.checkpoint_every, args.preempt_at)
    try:
        demo.run()
    finally:
        say("\n== Cleaning up: operator, kubelet (and its pods), control plane")
        demo.stack.stop()
        say(f"   artifacts kept in {demo.job_log_dir} (make clean removes them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
