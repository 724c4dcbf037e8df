"""`make cluster-up` as a user lives in it: the whole stack from a clean root by the CLI, the samples
under deploy/samples applied with the real kubectl, `kubectl logs` (-f, --previous, -c) and `kubectl
describe` against process-kubelet pods, PVC checkpoints across a gang restart, and `down` leaving no
process behind."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pax_cluster.binaries import find_binaries
from pax_cluster.gcs_emulator import GcsEmulator
from pax_cluster.procs import DEPLOY, alive, wait_for
from pax_cluster.stack import BUCKET, LocalStack, read_stack_state

from tests import pods
from tests.pods import container, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SAMPLES = DEPLOY / "samples"
LOCAL_SAMPLES = ("paxjob-lm-tiny-local.yaml", "paxjob-lm-tiny-gcs-local.yaml")  # these run; the rest dry-run
JOB_TIMEOUT_S = 420.0
POD_TIMEOUT_S = 60.0
CLI = [sys.executable, "-m", "pax_cluster.cli"]


class Cluster:
    """A stack started by `pax_cluster.cli up --root`, driven as a user would: kubectl + KUBECONFIG."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.binaries = find_binaries()

    def cli(self, command: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        argv = [*CLI, command, "--root", str(self.root)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def kubectl(
        self, *args: str, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return self.binaries.run_kubectl(self.root / "kubeconfig", *args, input=input, timeout=timeout)

    def ok(self, *args: str, input: str | None = None, timeout: float = 120.0) -> str:
        done = self.kubectl(*args, input=input, timeout=timeout)
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
        return done.stdout

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        LocalStack.attach(self.root).control_plane.create_namespace(name)
        return name

    def get(self, kind: str, name: str, ns: str) -> dict[str, Any]:
        done = self.kubectl("get", kind, name, "-n", ns, "-o", "json")
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def wait_job(
        self, name: str, ns: str, done: Any, what: str, timeout: float = JOB_TIMEOUT_S
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.get("paxjob", name, ns).get("status") or {}
            if status.get("phase") == "Failed":
                pytest.fail(f"{ns}/{name} Failed: {json.dumps(status)}\n{self.diagnostics(ns)}")
            return status if done(status) else None

        try:
            return wait_for(f"{ns}/{name}: {what}", probe, timeout, interval=1.0)
        except TimeoutError as err:
            pytest.fail(f"{err}\n{self.diagnostics(ns)}")

    def wait_pod(self, name: str, ns: str, *phases: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            pod = self.get("pod", name, ns)
            return pod if (pod.get("status") or {}).get("phase") in phases else None

        return wait_for(f"pod {ns}/{name} in {phases}", probe, POD_TIMEOUT_S, interval=0.5)

    def diagnostics(self, ns: str) -> str:
        logs = self.root / "logs"
        parts = [f"--- operator\n{(logs / 'operator.log').read_text(errors='replace')[-3000:]}"]
        parts.append(f"--- kubelet\n{(logs / 'kubelet.log').read_text(errors='replace')[-3000:]}")
        for log in sorted((self.root / "kubelet" / "pods" / ns).glob("*/trainer.log")):
            parts.append(f"--- {log.parent.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def pids(self) -> list[tuple[int, str]]:
        """(pid, exe) of every process the stack recorded: its components and the control plane's."""
        stack = read_stack_state(self.root) or {"components": []}
        plane = json.loads((self.root / "control-plane" / "state.json").read_text())
        return [(c["pid"], c["exe"]) for c in stack["components"]] + [
            (p["pid"], p["exe"]) for p in plane["procs"]
        ]


def processes_under(root: Path) -> list[int]:
    """Live pids whose command line mentions `root` or whose stdout/stderr is a file under it (every
    component logs there; every pod process writes its container log there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = proc.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            outputs = [
                os.readlink(proc / "fd" / str(fd)) for fd in (1, 2) if (proc / "fd" / str(fd)).exists()
            ]
        except OSError:
            continue
        if str(root) in cmdline or any(out.startswith(str(root)) for out in outputs):
            found.append(int(proc.name))
    return [pid for pid in found if alive(pid)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """`up` from a clean root; `down` at the end (the last test asserts what it leaves)."""
    c = Cluster(tmp_path_factory.mktemp("cluster") / ".cluster")
    up = c.cli("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"export KUBECONFIG={c.root / 'kubeconfig'}" in up.stdout
        for component in ("etcd", "kube-apiserver", "operator", "kubelet", "gcs"):
            assert re.search(rf"{component}\s+running", up.stdout), up.stdout
        assert f"--root {c.root}" in up.stdout  # stop/status hints name this root, not the default one
        yield c
    finally:
        c.cli("down")


def test_up_again_is_a_no_op_and_a_crash_is_reported_and_repaired(cluster: Cluster) -> None:
    before = cluster.pids()
    again = cluster.cli("up")
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
    assert cluster.pids() == before
    operator = _component_pid(cluster, "operator")
    os.kill(operator, signal.SIGKILL)
    wait_for("the operator to die", lambda: not alive(operator), 10)
    status = cluster.cli("status")
    assert status.returncode == 1 and "crashed: operator" in status.stdout, status.stdout
    repaired = cluster.cli("up")
    assert repaired.returncode == 0 and "restarting operator" in repaired.stdout, (
        repaired.stdout + repaired.stderr
    )
    assert cluster.cli("status").returncode == 0


def _component_pid(cluster: Cluster, name: str) -> int:
    state = read_stack_state(cluster.root)
    assert state is not None
    return int(next(c["pid"] for c in state["components"] if c["name"] == name))


def test_local_sample_succeeds_and_kubectl_logs_shows_the_steps(cluster: Cluster) -> None:
    """Must-show 1: apply the local sample, the job Succeeds, `kubectl logs` shows the trainer's steps."""
    ns = cluster.namespace("sample")
    cluster.ok("apply", "-n", ns, "-f", str(SAMPLES / "paxjob-lm-tiny-local.yaml"))
    cluster.wait_job("lm-tiny-local", ns, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    logs = cluster.ok("logs", "-n", ns, "lm-tiny-local-0")
    assert re.search(r"step \d+/200 loss", logs), logs[-2000:]
    assert cluster.ok("logs", "-n", ns, "lm-tiny-local-1", "-c", "trainer").strip()
    claim = cluster.get("pvc", "lm-tiny-local-data", ns)
    assert claim["status"]["phase"] == "Bound" and claim["spec"]["storageClassName"] == "pax-local"


def test_pvc_checkpoints_survive_a_gang_restart(cluster: Cluster) -> None:
    """Must-show 2: a PVC-backed job resumes from its checkpoint after host 1 is preempted; the data lives
    under the cluster root and nothing appears on the host's /mnt."""
    mnt_before = sorted(os.listdir("/mnt"))
    ns = cluster.namespace("pvc")
    docs = list(_yaml_docs(SAMPLES / "paxjob-lm-tiny-local.yaml"))
    job = next(d for d in docs if d["kind"] == "PaxJob")
    job["spec"]["overrides"]["num_train_steps"] = "400"
    job["spec"].pop("tensorboard")
    cluster.ok(
        "apply", "-n", ns, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    )
    cluster.wait_job(
        "lm-tiny-local",
        ns,
        lambda s: (s.get("progress") or {}).get("lastCheckpointStep", 0) >= 50,
        "a first checkpoint",
    )
    cluster.ok("delete", "pod", "lm-tiny-local-1", "-n", ns, "--grace-period=30", "--wait=false")
    status = cluster.wait_job(
        "lm-tiny-local", ns, lambda s: s.get("phase") == "Succeeded", "Succeeded after the restart"
    )
    assert status.get("restartAttempt", 0) >= 1, status
    resumed = cluster.ok("logs", "-n", ns, "lm-tiny-local-0")
    match = re.search(r"resumed from checkpoint at step (\d+)", resumed)
    assert match and int(match.group(1)) >= 50, resumed[-2000:]
    volumes = list((cluster.root / "kubelet" / "persistent-volumes").glob(f"{ns}-lm-tiny-local-data-*"))
    assert len(volumes) == 1
    checkpoints = sorted(p.name for p in (volumes[0] / "lm-tiny-local" / "checkpoints").iterdir())
    assert any(name.endswith("400") for name in checkpoints), checkpoints
    assert sorted(os.listdir("/mnt")) == mnt_before
    assert not Path("/mnt/lm-tiny-local").exists()


def test_kubectl_logs_previous_follow_container_and_describe_events(cluster: Cluster) -> None:
    """Must-show 3: after a restart in place `--previous` shows the previous run; -f follows to the end;
    `kubectl describe` shows the kubelet's events (started, failed, back-off, killing)."""
    ns = cluster.namespace("logs")
    flaky = (
        "if [ -e /state/tried ]; then echo second-run; exit 0; fi; touch /state/tried; echo first-run; exit 4"
    )
    pod = pods.pod(
        "flaky",
        sh("main", flaky, volumeMounts=[{"name": "state", "mountPath": "/state"}]),
        sh("ticker", "for i in 1 2 3 4 5; do echo tick $i; sleep 0.5; done"),
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
    cluster.wait_pod("flaky", ns, "Running", "Succeeded")
    followed = cluster.ok("logs", "-n", ns, "flaky", "-c", "ticker", "-f", timeout=60)
    assert followed.split("\n")[:5] == [f"tick {i}" for i in range(1, 6)], followed
    cluster.wait_pod("flaky", ns, "Succeeded")
    assert cluster.ok("logs", "-n", ns, "flaky", "-c", "main").strip() == "second-run"
    assert cluster.ok("logs", "-n", ns, "flaky", "-c", "main", "--previous").strip() == "first-run"
    no_previous = cluster.kubectl("logs", "-n", ns, "flaky", "-c", "ticker", "--previous")
    assert no_previous.returncode != 0 and "previous terminated container" in no_previous.stderr
    described = cluster.ok("describe", "pod", "flaky", "-n", ns)
    for reason in ("Started", "Failed", "BackOff"):
        assert re.search(rf"(Normal|Warning)\s+{reason}\s", described), described
    assert "exited with code 4" in described

    sleeper = pods.pod(
        "sleeper", container("main", "sleep", "300"), restartPolicy="Always", terminationGracePeriodSeconds=5
    )
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(sleeper))
    cluster.wait_pod("sleeper", ns, "Running")
    cluster.ok("delete", "pod", "sleeper", "-n", ns, "--timeout=60s")
    events = cluster.ok(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=sleeper", "-o", "json"
    )
    assert "Killing" in {e["reason"] for e in json.loads(events)["items"]}, events


def test_volumes_it_cannot_provide_fail_the_pod_clearly(cluster: Cluster) -> None:
    ns = cluster.namespace("volumes")
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "ssd"},
        "spec": {
            "storageClassName": "fast-ssd",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(claim))
    for name, volume, message in (
        (
            "nfs",
            {"nfs": {"server": "10.0.0.9", "path": "/export"}},
            "nfs volumes are not provided by the process kubelet",
        ),
        (
            "ssd",
            {"persistentVolumeClaim": {"claimName": "ssd"}},
            "storageClassName 'fast-ssd' has no provisioner",
        ),
    ):
        pod = pods.pod(
            name,
            container("main", "true", volumeMounts=[{"name": "v", "mountPath": "/v"}]),
            volumes=[{"name": "v", **volume}],
        )
        cluster.ok("apply", "-n", ns, "-f", "-", input=json.dumps(pod))
        status = cluster.wait_pod(name, ns, "Failed")["status"]
        assert status["reason"] == "CreateContainerConfigError" and message in status["message"], status
        waiting = status["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "CreateContainerConfigError" and message in waiting["message"]
        assert message in cluster.ok("describe", "pod", name, "-n", ns)


def test_gcs_sample_runs_on_the_emulator(cluster: Cluster) -> None:
    ns = cluster.namespace("gcs")
    cluster.ok("apply", "-n", ns, "-f", str(SAMPLES / "paxjob-lm-tiny-gcs-local.yaml"))
    cluster.wait_job("lm-tiny-gcs", ns, lambda s: s.get("phase") == "Succeeded", "Succeeded")
    state = read_stack_state(cluster.root)
    assert state is not None
    objects = GcsEmulator(port=int(state["gcs_port"])).list_objects(BUCKET, "lm-tiny-gcs/")
    assert any("/checkpoints/" in name for name in objects), objects[:20]


def test_every_other_sample_is_admitted_by_server_dry_run(cluster: Cluster) -> None:
    ns = cluster.namespace("dry-run")
    samples = sorted(p.name for p in SAMPLES.glob("paxjob-*.yaml"))
    assert set(LOCAL_SAMPLES) <= set(samples)
    for sample in samples:
        if sample in LOCAL_SAMPLES:
            continue  # run above
        done = cluster.kubectl("create", "-n", ns, "--dry-run=server", "-f", str(SAMPLES / sample))
        assert done.returncode == 0, (sample, done.stderr)


def test_zz_down_leaves_no_process_behind(cluster: Cluster) -> None:
    """Must-show 1 (end): `down` stops every component and every pod process."""
    recorded = cluster.pids()
    down = cluster.cli("down")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    assert not [pid for pid, exe in recorded if alive(pid, exe)]
    assert processes_under(cluster.root) == []
    assert read_stack_state(cluster.root) is None
    assert cluster.cli("status").returncode == 1


def _yaml_docs(path: Path) -> Iterator[dict[str, Any]]:
    import yaml

    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)
