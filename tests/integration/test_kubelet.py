"""The process kubelet against the real kube-apiserver: pods really run as local processes."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client, config, watch
from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane
from pax_cluster.kubelet import ProcessKubelet, ServingTls
from pax_cluster.procs import alive, wait_for

from tests import pods
from tests.api import unless_missing
from tests.pods import sh

if TYPE_CHECKING:
    from tests.conftest import Kubectl

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

WAIT_S = 45.0
PY = sys.executable


@pytest.fixture
def core(control_plane: ControlPlane) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(control_plane.kubeconfig)))


@pytest.fixture
def kubelet(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[ProcessKubelet]:
    """A kubelet that only runs this test's namespace, on its own Node (deleted afterwards), serving
    `kubectl logs` with a certificate from the control plane's PKI."""
    node = f"kubelet-{secrets.token_hex(4)}"
    cert, key = control_plane.issue_kubelet_serving_cert(node)
    tls = ServingTls(cert, key, control_plane.ca_file)
    root = tmp_path / "kubelet"
    with ProcessKubelet(control_plane.kubeconfig, root, node, namespaces=[namespace], tls=tls) as k:
        yield k
    k.core.delete_node(node)


def pod(name: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A test pod, labelled app=kubelet-test (the downward-API test reads the label)."""
    return pods.pod(name, *containers, labels={"app": "kubelet-test"}, **spec)


def read(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any] | None:
    found = unless_missing(lambda: core.read_namespaced_pod(name, namespace))
    return None if found is None else core.api_client.sanitize_for_serialization(found)


def phase_is(core: client.CoreV1Api, namespace: str, name: str, *phases: str) -> Callable[[], Any]:
    def check() -> dict[str, Any] | None:
        doc = read(core, namespace, name)
        return doc if doc and doc.get("status", {}).get("phase") in phases else None

    return check


def terminated(doc: dict[str, Any], key: str = "containerStatuses") -> dict[str, dict[str, Any]]:
    return {s["name"]: s["state"]["terminated"] for s in doc["status"][key]}


def test_init_then_main_succeeds_with_env_and_message(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"K": "from-cm"}})
    volume = [{"name": "scratch", "mountPath": "/scratch"}]
    main = sh(
        "main",
        'echo "NAME=$POD_NAME NS=$POD_NS IP=$POD_IP NODE=$NODE APP=$APP CM=$CM ADDR=$ADDR ARG=$1'
        ' HOST=$(hostname)";'
        ' cat /scratch/init.txt; echo "{\\"ok\\": true}" > /dev/termination-log; exit 0',
        args=["$(POD_NAME)-$(PORT)", "$$(POD_NAME)"],
        env=[
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "K"}}},
            {"name": "PORT", "value": "8476"},
            {"name": "ADDR", "value": "$(POD_NAME).$(POD_NS).svc:$(PORT)"},
        ],
        volumeMounts=volume,
    )
    main["command"] = ["bash", "-c", main["command"][2], "bash"]
    init = sh("init", "echo init-ran > /scratch/init.txt", volumeMounts=volume)
    body = pod("ok", main, initContainers=[init], volumes=[{"name": "scratch", "emptyDir": {}}])
    core.create_namespaced_pod(namespace, body)
    doc = wait_for("pod ok to finish", phase_is(core, namespace, "ok", "Succeeded", "Failed"), WAIT_S)
    log = kubelet.logs(namespace, "ok", "main")
    assert doc["status"]["phase"] == "Succeeded", log
    ip = doc["status"]["podIP"]
    assert ip.startswith("127.10.") and doc["status"]["hostIP"] == "127.0.0.1"
    assert doc["spec"]["nodeName"] == kubelet.node_name
    assert terminated(doc, "initContainerStatuses")["init"]["exitCode"] == 0
    state = terminated(doc)["main"]
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    assert state["message"].strip() == '{"ok": true}'
    assert (
        f"NAME=ok NS={namespace} IP={ip} NODE={kubelet.node_name} APP=kubelet-test CM=from-cm "
        f"ADDR=ok.{namespace}.svc:8476 ARG=ok-8476 HOST=ok" in log
    )
    assert "init-ran" in log
    conditions = {c["type"]: c["status"] for c in doc["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True" and conditions["Initialized"] == "True"


def test_pods_resolve_each_other_through_the_headless_service_names(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    server = (
        "import socket, os\n"
        "s = socket.create_server((os.environ['POD_IP'], 8476))\n"
        "c, _ = s.accept(); c.sendall(b'hello from ' + socket.gethostname().encode()); c.close()\n"
    )
    client_py = (
        "import socket, sys, time\n"
        "deadline = time.time() + 30\n"
        "while True:\n"
        "    try:\n"
        "        c = socket.create_connection((sys.argv[1], 8476), timeout=2); break\n"
        "    except OSError:\n"
        "        if time.time() > deadline: raise\n"
        "        time.sleep(0.2)\n"
        "print(socket.gethostbyname(sys.argv[1]), c.recv(100).decode())\n"
    )
    ip_env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    for i, (script, args) in enumerate([(server, []), (client_py, [f"job-0.job.{namespace}.svc"])]):
        container = {"name": "c", "image": "none", "command": ["python", "-c", script, *args], "env": ip_env}
        core.create_namespaced_pod(
            namespace, pod(f"job-{i}", container, hostname=f"job-{i}", subdomain="job")
        )
    for name in ("job-0", "job-1"):
        doc = wait_for(f"{name} to finish", phase_is(core, namespace, name, "Succeeded", "Failed"), WAIT_S)
        assert doc["status"]["phase"] == "Succeeded", kubelet.logs(namespace, name, "c")
    server_ip = read(core, namespace, "job-0")["status"]["podIP"]  # type: ignore[index]
    assert kubelet.logs(namespace, "job-1", "c").strip() == f"{server_ip} hello from job-0"


def test_failure_reports_exit_code_and_log_tail(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    container = sh(
        "main", "echo 'bad override: foo'; exit 3", terminationMessagePolicy="FallbackToLogsOnError"
    )
    core.create_namespaced_pod(namespace, pod("bad", container))
    doc = wait_for("pod bad to finish", phase_is(core, namespace, "bad", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Failed"
    state = terminated(doc)["main"]
    assert state["exitCode"] == 3 and state["reason"] == "Error"
    assert "bad override: foo" in state["message"]


def _running_pid(kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, name: str) -> int:
    wait_for(f"{name} Running", phase_is(core, namespace, name, "Running"), WAIT_S)
    wait_for(f"{name} ready", lambda: "ready" in kubelet.logs(namespace, name, "main"), WAIT_S)
    return int((kubelet.root / "pods" / namespace / name / "main.pid").read_text())


def _delete_running(
    kubelet: ProcessKubelet,
    core: client.CoreV1Api,
    namespace: str,
    name: str,
    script: str,
    *,
    grace_s: int,
    delete_grace_s: int | None = None,
) -> tuple[int, float]:
    """Run `script` (it prints "ready") in pod `name`, then delete the pod (with `delete_grace_s`, else the
    pod's own grace): the container's pid and the seconds until the pod was gone."""
    core.create_namespaced_pod(
        namespace, pod(name, sh("main", script), terminationGracePeriodSeconds=grace_s)
    )
    pid = _running_pid(kubelet, core, namespace, name)
    started = time.monotonic()
    if delete_grace_s is None:
        core.delete_namespaced_pod(name, namespace)
    else:
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=delete_grace_s)
    wait_for(f"pod {name} to disappear", lambda: read(core, namespace, name) is None, WAIT_S)
    return pid, time.monotonic() - started


def test_graceful_deletion_delivers_sigterm(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    pid, elapsed = _delete_running(kubelet, core, namespace, "graceful", script, grace_s=20)
    assert elapsed < 10
    assert "got-term" in kubelet.logs(namespace, "graceful", "main")
    assert not alive(pid)


def test_sigkill_after_grace_when_sigterm_is_ignored(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    script = "trap '' TERM; echo ready; while true; do sleep 0.1; done"
    pid, elapsed = _delete_running(kubelet, core, namespace, "stubborn", script, grace_s=30, delete_grace_s=2)
    assert 2 <= elapsed < 15, elapsed
    assert not alive(pid)


def test_hard_kill_of_a_container(kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod("crash", sh("main", "echo ready; sleep 300")))
    _running_pid(kubelet, core, namespace, "crash")
    kubelet.kill_container(namespace, "crash", "main", signal.SIGKILL)
    doc = wait_for("pod crash Failed", phase_is(core, namespace, "crash", "Failed"), WAIT_S)
    assert terminated(doc)["main"]["exitCode"] == 128 + signal.SIGKILL


def test_node_loss_fails_pods_with_disruption_target(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, pod("lost", sh("main", "echo ready; sleep 300")))
    pid = _running_pid(kubelet, core, namespace, "lost")
    kubelet.lose_node()
    assert not alive(pid)
    doc = wait_for("pod lost Failed", phase_is(core, namespace, "lost", "Failed"), WAIT_S)
    assert doc["status"]["reason"] == "NodeLost"
    conditions = {c["type"]: c for c in doc["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["status"] == "True"
    time.sleep(1)  # the runner's own report must not overwrite the node-loss status
    assert read(core, namespace, "lost")["status"]["reason"] == "NodeLost"  # type: ignore[index]
    node = core.read_node(kubelet.node_name)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"  # replaced, Ready again


def test_native_sidecar_runs_alongside_and_is_stopped(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    volume = [{"name": "shared", "mountPath": "/shared"}]
    sidecar = sh(
        "sidecar",
        "trap 'echo sidecar-term; exit 0' TERM; echo up > /shared/sidecar; while true; do sleep 0.1; done",
        restartPolicy="Always",
        volumeMounts=volume,
    )
    main = sh(
        "main",
        "for i in $(seq 100); do [ -e /shared/sidecar ] && exit 0; sleep 0.1; done; exit 1",
        volumeMounts=volume,
    )
    body = pod("side", main, initContainers=[sidecar], volumes=[{"name": "shared", "emptyDir": {}}])
    core.create_namespaced_pod(namespace, body)
    doc = wait_for("pod side to finish", phase_is(core, namespace, "side", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded", kubelet.logs(namespace, "side", "main")
    assert terminated(doc)["main"]["exitCode"] == 0
    assert "sidecar" in terminated(doc, "initContainerStatuses")
    assert "sidecar-term" in kubelet.logs(namespace, "side", "sidecar")
    pid = int((kubelet.root / "pods" / namespace / "side" / "sidecar.pid").read_text())
    assert not alive(pid)


def test_stop_leaves_no_processes(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    node = f"kubelet-{secrets.token_hex(4)}"
    k = ProcessKubelet(control_plane.kubeconfig, tmp_path / "k", node, namespaces=[namespace]).start()
    try:
        core.create_namespaced_pod(namespace, pod("p", sh("main", "trap '' TERM; echo ready; sleep 300")))
        pid = _running_pid(k, core, namespace, "p")
        started = time.monotonic()
        k.stop(grace_s=1)
        assert time.monotonic() - started < 15
        assert not alive(pid)
        assert not os.path.exists(f"/proc/{pid}")
        assert not any(t.is_alive() for t in k._threads), "watch/heartbeat threads outlived stop()"
    finally:
        k.stop(grace_s=0)
        core.delete_node(node)


def test_eviction_keeps_the_disruption_target_condition(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """The apiserver marks an evicted pod DisruptionTarget; the kubelet's status patches must keep it."""
    script = "trap 'echo got-term; sleep 1; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    core.create_namespaced_pod(
        namespace, pod("evicted", sh("main", script), terminationGracePeriodSeconds=20)
    )
    _running_pid(kubelet, core, namespace, "evicted")
    version = core.read_namespaced_pod("evicted", namespace).metadata.resource_version
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted"}}
    core.create_namespaced_pod_eviction("evicted", namespace, eviction)
    history: list[tuple[str, str | None, bool]] = []  # (event, phase, has DisruptionTarget)
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod,
        namespace,
        field_selector="metadata.name=evicted",
        resource_version=version,
        timeout_seconds=int(WAIT_S),
    ):
        status = event["object"].status
        types = {c.type for c in status.conditions or []}
        history.append((event["type"], status.phase, "DisruptionTarget" in types))
        if event["type"] == "DELETED":
            stream.stop()
    assert history and history[-1][0] == "DELETED", history
    first = next(i for i, (_, _, disrupted) in enumerate(history) if disrupted)
    assert all(disrupted for _, _, disrupted in history[first:]), history
    assert any(phase in ("Succeeded", "Failed") for _, phase, _ in history), history
    assert "got-term" in kubelet.logs(namespace, "evicted", "main")


def test_on_failure_restarts_in_place_with_backoff(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    volume = [{"name": "state", "mountPath": "/state"}]
    script = "if [ -e /state/tried ]; then echo second; exit 0; fi; touch /state/tried; echo first; exit 4"
    body = pod(
        "flaky",
        sh("main", script, volumeMounts=volume),
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    core.create_namespaced_pod(namespace, body)
    doc = wait_for("pod flaky to finish", phase_is(core, namespace, "flaky", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded"
    status = doc["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 4
    assert status["state"]["terminated"]["exitCode"] == 0
    assert kubelet.logs(namespace, "flaky", "main").split() == ["first", "second"]


@dataclass
class CliKubelet:
    """`python -m pax_cluster.kubelet` (as the demo runs it) serving a fresh node from `root`; the test
    starts it, as often as it likes; the fixture stops what is left and deletes the node."""

    core: client.CoreV1Api
    namespace: str
    node: str
    root: Path
    argv: list[str]
    logs: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, log: str) -> subprocess.Popen[bytes]:
        self.started.append(procs.spawn(self.argv, self.logs / log, detach=False))
        return self.started[-1]

    def sleeping_pod_pid(self) -> int:
        """Create pod p (it sleeps), wait until the kubelet runs it: its process id."""
        self.core.create_namespaced_pod(self.namespace, pod("p", sh("main", "echo ready; sleep 300")))
        wait_for("pod p Running", phase_is(self.core, self.namespace, "p", "Running"), WAIT_S)
        return int(wait_for("pid file", lambda: _read_pid(self.root, self.namespace, "p"), WAIT_S))


@pytest.fixture
def cli_kubelet(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> Iterator[CliKubelet]:
    node, root = f"kubelet-{secrets.token_hex(4)}", tmp_path / "root"
    argv = [PY, "-m", "pax_cluster.kubelet", "--kubeconfig", str(control_plane.kubeconfig)]
    argv += ["--root", str(root), "--node-name", node, "--namespace", namespace]
    kubelet = CliKubelet(core, namespace, node, root, argv, tmp_path)
    try:
        yield kubelet
    finally:
        running = {p.pid: p for p in kubelet.started}
        procs.terminate(list(running), grace_s=30, is_alive=lambda pid: running[pid].poll() is None)
        core.delete_node(node)


def test_subprocess_mode_node_loss_signal_and_clean_exit(
    cli_kubelet: CliKubelet, core: client.CoreV1Api
) -> None:
    """SIGUSR1 = node loss, SIGTERM = clean exit."""
    proc = cli_kubelet.start("kubelet.log")
    pid = cli_kubelet.sleeping_pod_pid()
    proc.send_signal(signal.SIGUSR1)
    lost = phase_is(core, cli_kubelet.namespace, "p", "Failed")
    assert wait_for("pod p Failed after node loss", lost, WAIT_S)["status"]["reason"] == "NodeLost"
    assert not alive(pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _read_pid(root: Path, namespace: str, name: str) -> int | None:
    path = root / "pods" / namespace / name / "main.pid"
    return int(path.read_text()) if path.exists() and path.read_text() else None


def test_kubectl_logs_current_previous_follow_and_container(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, kubectl: Kubectl
) -> None:
    """`kubectl logs` through the apiserver to the kubelet's TLS endpoint: the current run, --previous
    after a restart in place, -c, -f until the container ends; and the kubelet's events in describe."""
    volume = [{"name": "state", "mountPath": "/state"}]
    script = "if [ -e /state/tried ]; then echo second; exit 0; fi; touch /state/tried; echo first; exit 4"
    ticker = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done"
    body = pod(
        "flaky",
        sh("main", script, volumeMounts=volume),
        sh("ticker", ticker),
        restartPolicy="OnFailure",
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    core.create_namespaced_pod(namespace, body)
    wait_for("pod flaky Running", phase_is(core, namespace, "flaky", "Running", "Succeeded"), WAIT_S)
    followed = kubectl("logs", "-n", namespace, "flaky", "-c", "ticker", "-f", timeout=WAIT_S)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [f"tick {i}" for i in range(1, 7)]
    wait_for("pod flaky to finish", phase_is(core, namespace, "flaky", "Succeeded", "Failed"), WAIT_S)
    current = kubectl("logs", "-n", namespace, "flaky", "-c", "main")
    previous = kubectl("logs", "-n", namespace, "flaky", "-c", "main", "--previous")
    assert (current.stdout, previous.stdout) == ("second\n", "first\n"), current.stderr + previous.stderr
    none = kubectl("logs", "-n", namespace, "flaky", "-c", "ticker", "--previous")
    assert none.returncode != 0 and "previous terminated container" in none.stderr, none.stderr
    assert kubectl("logs", "-n", namespace, "flaky", "-c", "main", "--tail=1").stdout == "second\n"
    described = kubectl("describe", "pod", "flaky", "-n", namespace).stdout
    for kind, reason in (("Normal", "Started"), ("Warning", "Failed"), ("Warning", "BackOff")):
        assert re.search(rf"{kind}\s+{reason}\s", described), described
    assert "Error: container main exited with code 4" in described


def test_deleting_a_running_pod_posts_killing(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_pod(namespace, pod("doomed", sh("main", "echo ready; sleep 300")))
    _running_pid(kubelet, core, namespace, "doomed")
    core.delete_namespaced_pod("doomed", namespace, grace_period_seconds=5)
    wait_for("pod doomed to disappear", lambda: read(core, namespace, "doomed") is None, WAIT_S)
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=doomed").items
    killing = [e for e in events if e.reason == "Killing"]
    assert (
        killing
        and killing[0].message == "Stopping container main"
        and killing[0].source.host == kubelet.node_name
    )


def test_a_volume_it_cannot_provide_fails_the_pod_with_the_reason(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """Never a silent skip: the pod fails, the container waits with CreateContainerConfigError and the
    message, a Warning event says it, and nothing ran."""
    main = sh("main", "echo ran > /tmp/pax-should-not-run", volumeMounts=[{"name": "v", "mountPath": "/v"}])
    body = pod("nfs", main, volumes=[{"name": "v", "nfs": {"server": "10.0.0.9", "path": "/export"}}])
    core.create_namespaced_pod(namespace, body)
    status = wait_for("pod nfs Failed", phase_is(core, namespace, "nfs", "Failed"), WAIT_S)["status"]
    message = "nfs volumes are not provided by the process kubelet"
    assert status["reason"] == "CreateContainerConfigError" and message in status["message"]
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError" and message in waiting["message"]
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=nfs").items
    assert any(e.type == "Warning" and message in e.message for e in events)
    assert kubelet.logs(namespace, "nfs", "main") == ""


def test_claims_get_host_path_volumes_under_the_kubelet_root_that_outlive_pods(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    mounts = [{"name": "data", "mountPath": "/mnt"}]
    mnt_before = sorted(os.listdir("/mnt"))
    writer = sh("main", "echo kept > /mnt/checkpoint", volumeMounts=mounts)
    core.create_namespaced_pod(namespace, pod("writer", writer, volumes=volumes))
    doc = wait_for("pod writer to finish", phase_is(core, namespace, "writer", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded", kubelet.logs(namespace, "writer", "main")
    core.delete_namespaced_pod("writer", namespace)
    reader = sh("main", "cat /mnt/checkpoint", volumeMounts=mounts)
    core.create_namespaced_pod(namespace, pod("reader", reader, volumes=volumes))
    doc = wait_for("pod reader to finish", phase_is(core, namespace, "reader", "Succeeded", "Failed"), WAIT_S)
    assert kubelet.logs(namespace, "reader", "main") == "kept\n"
    bound = core.read_namespaced_persistent_volume_claim("data", namespace)
    assert bound.status.phase == "Bound" and bound.spec.storage_class_name == "pax-local"
    pv = core.read_persistent_volume(bound.spec.volume_name)
    assert (
        pv.spec.claim_ref.uid == bound.metadata.uid and pv.spec.persistent_volume_reclaim_policy == "Retain"
    )
    host_dir = Path(pv.spec.host_path.path)
    assert host_dir.is_relative_to(kubelet.root) and (host_dir / "checkpoint").read_text() == "kept\n"
    assert sorted(os.listdir("/mnt")) == mnt_before  # written only under the kubelet's root
    core.delete_persistent_volume(pv.metadata.name)


def test_service_account_token_volume_is_provided(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """The projected kube-api-access volume that admission adds to every pod holds a real token."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount"
    main = sh("main", f"cat {path}/namespace; echo; wc -c < {path}/token; grep -c CERTIFICATE {path}/ca.crt")
    core.create_namespaced_pod(namespace, pod("sa", main))
    doc = wait_for("pod sa to finish", phase_is(core, namespace, "sa", "Succeeded", "Failed"), WAIT_S)
    out = kubelet.logs(namespace, "sa", "main").split()
    assert doc["status"]["phase"] == "Succeeded", out
    assert out[0] == namespace and int(out[1]) > 100 and int(out[2]) >= 2


def test_a_restarted_kubelet_kills_what_its_crashed_predecessor_left_and_reports_it_lost(
    cli_kubelet: CliKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """`make cluster-up` restarts a crashed kubelet: the pods it had started are not run twice."""
    first = cli_kubelet.start("first.log")
    pid = cli_kubelet.sleeping_pod_pid()
    os.killpg(first.pid, signal.SIGKILL)  # the kubelet crashes; its pod's process lives on
    first.wait(timeout=10)
    assert alive(pid)
    cli_kubelet.start("second.log")
    doc = wait_for("pod p reported lost", phase_is(core, namespace, "p", "Failed"), WAIT_S)
    assert doc["status"]["reason"] == "NodeLost" and "kubelet restarted" in doc["status"]["message"]
    wait_for("the leftover process to die", lambda: not alive(pid), 10)
    time.sleep(1)
    assert _read_pid(cli_kubelet.root, namespace, "p") == pid, "the pod was started a second time"


def _events(core: client.CoreV1Api, namespace: str, name: str) -> list[str]:
    items = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [f"{e.type} {e.reason}: {e.message}" for e in items]


def test_working_dir_is_entered_inside_the_container(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """A workingDir in a volume is the volume's (it was taken as a host path, before the mounts: a pod
    whose workingDir did not exist on the host stayed Pending for ever, with no event)."""
    target = tmp_path / "work"  # the mount point: inside the container only, absent on the host
    mounts = [{"name": "scratch", "mountPath": str(target)}]
    main = sh(
        "main", "pwd; echo here > relative.txt; cat relative.txt", volumeMounts=mounts, workingDir=str(target)
    )
    core.create_namespaced_pod(namespace, pod("wd", main, volumes=[{"name": "scratch", "emptyDir": {}}]))
    doc = wait_for("pod wd to finish", phase_is(core, namespace, "wd", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded", kubelet.logs(namespace, "wd", "main")
    assert kubelet.logs(namespace, "wd", "main") == f"{target}\nhere\n"
    assert not (target / "relative.txt").exists()  # written in the volume, not on the host


def test_a_working_dir_that_does_not_exist_fails_the_container_with_the_reason(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir"
    core.create_namespaced_pod(namespace, pod("nowd", sh("main", "echo ran", workingDir=str(missing))))
    doc = wait_for("pod nowd Failed", phase_is(core, namespace, "nowd", "Failed", "Succeeded"), WAIT_S)
    state = terminated(doc)["main"]
    assert doc["status"]["phase"] == "Failed" and state["exitCode"] == 128
    assert f"workingDir {missing}: no such directory" in state["message"]
    assert "ran" not in kubelet.logs(namespace, "nowd", "main") and not missing.exists()


def test_a_container_the_os_refuses_to_start_fails_the_pod_with_the_reason(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """One argument over the kernel's 128 KiB limit (E2BIG): the pod stayed Pending for ever."""
    main = sh("main", "echo ran", args=["x" * 200_000])
    core.create_namespaced_pod(namespace, pod("huge", main))
    doc = wait_for("pod huge Failed", phase_is(core, namespace, "huge", "Failed", "Succeeded"), WAIT_S)
    assert doc["status"]["phase"] == "Failed" and doc["status"]["reason"] == "StartError"
    assert "Argument list too long" in doc["status"]["message"]
    assert any(
        e.startswith("Warning Failed:") and "Argument list too long" in e
        for e in _events(core, namespace, "huge")
    )


def _sleeping(seconds: str) -> list[int]:
    """Host pids of `sleep <seconds>` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", seconds.encode()] and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("end", ["deleted", "exits"])
def test_no_process_of_a_container_outlives_it(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, end: str
) -> None:
    """Children that left the container's process group (setsid, a daemon's double fork) die with the
    container, whether it is deleted or its main process exits (they lived on, for ever)."""
    marker = f"{secrets.randbelow(10**6) + 10**6}.{secrets.randbelow(10**6)}"
    main_script = "echo ready; sleep 300" if end == "deleted" else "echo ready; sleep 2"
    script = f"setsid sleep {marker} & (trap '' TERM; sleep {marker}) & {main_script}"
    core.create_namespaced_pod(namespace, pod("forks", sh("main", script), terminationGracePeriodSeconds=2))
    try:
        _running_pid(kubelet, core, namespace, "forks")
        wait_for("the children to start", lambda: len(_sleeping(marker)) == 2, WAIT_S)
        if end == "deleted":
            core.delete_namespaced_pod("forks", namespace)
            wait_for("pod forks to disappear", lambda: read(core, namespace, "forks") is None, WAIT_S)
        else:
            finished = phase_is(core, namespace, "forks", "Succeeded", "Failed")
            assert wait_for("pod forks to finish", finished, WAIT_S)["status"]["phase"] == "Succeeded"
        assert wait_for("the children to die", lambda: not _sleeping(marker), 10)
    finally:
        for pid in _sleeping(marker):
            os.kill(pid, signal.SIGKILL)


def test_a_secret_expanded_into_the_command_stays_out_of_the_kubelet_log(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = secrets.token_hex(16)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "stringData": {"token": token}})
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}]
    main = sh("main", 'test "$0" = "--token=$TOKEN" && echo same', args=["--token=$(TOKEN)"], env=env)
    with caplog.at_level("INFO", logger="pax_cluster.kubelet"):
        core.create_namespaced_pod(namespace, pod("sec", main))
        doc = wait_for("pod sec to finish", phase_is(core, namespace, "sec", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded" and kubelet.logs(namespace, "sec", "main") == "same\n"
    assert "--token=$(TOKEN)" in caplog.text and token not in caplog.text


@pytest.mark.parametrize("field", ["hostPID", "shareProcessNamespace"])
def test_a_pod_asking_for_a_shared_pid_namespace_is_refused_with_the_reason(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, field: str
) -> None:
    """Each container has a PID namespace of its own: a pod asking to see the host's (or its other
    containers') processes ran anyway, seeing none of them."""
    core.create_namespaced_pod(namespace, pod("pids", sh("main", "echo ran"), **{field: True}))
    status = wait_for("pod pids Failed", phase_is(core, namespace, "pids", "Failed", "Succeeded"), WAIT_S)[
        "status"
    ]
    assert status["phase"] == "Failed" and status["reason"] == "CreateContainerConfigError"
    assert f"spec.{field}: true" in status["message"] and kubelet.logs(namespace, "pids", "main") == ""
    assert any(f"spec.{field}: true" in e for e in _events(core, namespace, "pids"))


def test_a_pod_printing_without_end_keeps_its_log_under_the_limit(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log was appended without limit: a pod printing gigabytes filled the user's disk."""
    from pax_cluster.kubelet import runner

    monkeypatch.setattr(runner, "LOG_LIMIT_BYTES", 1024 * 1024)
    monkeypatch.setattr(runner, "LOG_KEEP_BYTES", 64 * 1024)
    script = "head -c 30000000 /dev/zero | tr '\\0' x | fold -w 99; echo the-end; exit 3"
    core.create_namespaced_pod(
        namespace, pod("chatty", sh("main", script, terminationMessagePolicy="FallbackToLogsOnError"))
    )
    doc = wait_for("pod chatty Failed", phase_is(core, namespace, "chatty", "Failed", "Succeeded"), WAIT_S)
    assert terminated(doc)["main"]["message"].endswith("the-end")
    log = kubelet.root / "pods" / namespace / "chatty" / "main.log"
    assert log.stat().st_size <= 1024 * 1024
    text = kubelet.logs(namespace, "chatty", "main")
    assert text.startswith("[process kubelet: ") and "earlier bytes of this log dropped" in text
    assert text.endswith("xthe-end\n")


def test_relative_container_paths_are_taken_from_the_container_root(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str, tmp_path: Path
) -> None:
    """mountPath, workingDir and terminationMessagePath "a/b" are /a/b, as in a runtime: they were taken
    from the kubelet's working directory, the checkout (mount points, message files made in it)."""
    work, message = tmp_path / "work", tmp_path / "message"
    relative = {p: str(p).lstrip("/") for p in (work, message)}
    main = sh(
        "main",
        f"pwd; echo written > {message}",
        volumeMounts=[{"name": "scratch", "mountPath": "../../" + relative[work]}],
        workingDir=relative[work],
        terminationMessagePath=relative[message],
    )
    core.create_namespaced_pod(namespace, pod("rel", main, volumes=[{"name": "scratch", "emptyDir": {}}]))
    doc = wait_for("pod rel to finish", phase_is(core, namespace, "rel", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded", kubelet.logs(namespace, "rel", "main")
    assert kubelet.logs(namespace, "rel", "main") == f"{work}\n"
    assert terminated(doc)["main"]["message"] == "written\n"
    top = Path(relative[work]).parts[0]
    assert not (procs.REPO_ROOT / top).exists() and not (procs.REPO_ROOT.parent / top).exists()


def test_env_from_keeps_multi_line_values_whole(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """envFrom passed a ConfigMap's or Secret's data as KEY=VALUE lines: a value's second line "X=1"
    became a variable X of its own (a PEM in a Secret was cut to its first line)."""
    value = "-----BEGIN-----\nINJECTED=1\n-----END-----"
    core.create_namespaced_secret(namespace, {"metadata": {"name": "pem"}, "stringData": {"PEM": value}})
    main = sh("main", 'printf "%s|" "$PEM" "${INJECTED-unset}"', envFrom=[{"secretRef": {"name": "pem"}}])
    core.create_namespaced_pod(namespace, pod("pem", main))
    doc = wait_for("pod pem to finish", phase_is(core, namespace, "pem", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded"
    assert kubelet.logs(namespace, "pem", "main") == f"{value}|unset|"


def test_a_native_sidecar_that_exits_is_restarted_and_says_so(
    kubelet: ProcessKubelet, core: client.CoreV1Api, namespace: str
) -> None:
    """A native sidecar (a TensorBoard that could not bind its port) that exited was never looked at
    again: not restarted, no event, its status running and ready for the rest of the pod's life."""
    sidecar = sh("sidecar", "echo start; sleep 0.5; echo cannot-bind >&2; exit 1", restartPolicy="Always")
    main = sh("main", "echo ready; sleep 5")
    core.create_namespaced_pod(namespace, pod("side", main, initContainers=[sidecar]))
    wait_for(
        "the sidecar's restart",
        lambda: kubelet.logs(namespace, "side", "sidecar").count("start") >= 2,
        WAIT_S,
    )
    doc = wait_for("pod side to finish", phase_is(core, namespace, "side", "Succeeded", "Failed"), WAIT_S)
    assert doc["status"]["phase"] == "Succeeded"
    (status,) = doc["status"]["initContainerStatuses"]
    assert status["restartCount"] >= 1 and status["lastState"]["terminated"]["exitCode"] == 1
    events = _events(core, namespace, "side")
    assert any(e.startswith("Warning Failed: Error: container sidecar exited with code 1") for e in events)
    assert any(e.startswith("Warning BackOff:") and "container sidecar" in e for e in events)
