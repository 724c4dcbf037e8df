"""The process kubelet's rooms that need no apiserver: run logs, the sandbox script, volumes, the PV a
claim gets, events, the node's daemon endpoint, config-error statuses, and the TLS log server."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pax_cluster import pki
from pax_cluster.kubelet import runlog
from pax_cluster.kubelet.events import WARNING, pod_event
from pax_cluster.kubelet.logserver import KUBELET_CLIENT_CN, LogServer
from pax_cluster.kubelet.node import claim_pod_subnet, node_status
from pax_cluster.kubelet.provisioner import STORAGE_CLASS, persistent_volume, storage_class, volume_name
from pax_cluster.kubelet.runner import CONFIG_ERROR, config_error_statuses
from pax_cluster.kubelet.sandbox import Mount, namespace_script, with_image_paths
from pax_cluster.kubelet.volumes import PodVolumes
from pax_cluster.podenv import PodSpecError

POD: dict[str, Any] = {
    "metadata": {"name": "job-0", "namespace": "ns", "uid": "u-1"},
    "spec": {"containers": [{"name": "trainer"}], "initContainers": [{"name": "init"}]},
    "status": {"podIP": "127.10.0.2"},
}


# -- run logs ---------------------------------------------------------------------------------------
def test_runs_split_one_log_into_current_and_previous(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    for uid, text in (("old-pod", b"attempt 0\n"), ("pod", b"first\n"), ("pod", b"second\nmore\n")):
        runlog.mark_run_start(log, uid)
        with log.open("ab") as out:
            out.write(text)
    current = runlog.find_run(log, previous=False)
    previous = runlog.find_run(log, previous=True)
    assert runlog.read_run(log, current) == b"second\nmore\n"
    assert runlog.read_run(log, previous) == b"first\n"
    assert runlog.tail_lines(runlog.read_run(log, current), 1) == b"more\n"
    assert runlog.tail_lines(b"a\nb\n", 0) == b""


def test_previous_never_reaches_into_an_older_pod_of_the_same_name(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    runlog.mark_run_start(log, "old")
    log.write_bytes(b"x\n")
    runlog.mark_run_start(log, "new")
    with pytest.raises(runlog.NoSuchRun, match="previous terminated container not found"):
        runlog.find_run(log, previous=True)
    with pytest.raises(runlog.NoSuchRun, match="not started"):
        runlog.find_run(tmp_path / "other.log", previous=False)


# -- sandbox ----------------------------------------------------------------------------------------
def test_sandbox_binds_volumes_read_only_and_keeps_the_image_visible(tmp_path: Path) -> None:
    data = tmp_path / "pv"
    data.mkdir()
    image = Path("/tmp/checkout")
    mounts = with_image_paths([Mount(data, "/mnt/data", read_only=True), Mount(data, "/tmp")], [image])
    assert [m.target for m in mounts] == ["/tmp", "/mnt/data", "/tmp/checkout"]
    script = namespace_script(
        hostname="job-0",
        hosts_file=tmp_path / "hosts",
        message_file=tmp_path / "msg",
        termination_path=None,
        mounts=mounts,
    )
    assert "hostname job-0" in script and f"mount --bind {tmp_path / 'hosts'} /etc/hosts" in script
    assert script.index("exec 10<") < script.index("hostname")  # sources opened before any mount
    assert "mount -o remount,bind,ro /mnt/data" in script
    assert "/dev/termination-log" in script and script.endswith('exec "$@"')


# -- volumes ----------------------------------------------------------------------------------------
class FakeVolumeApi:
    def __init__(self, claim_dir: Path) -> None:
        self.claim_dir = claim_dir
        self.claims: list[str] = []

    def claim_path(self, namespace: str, claim: str) -> Path:
        self.claims.append(f"{namespace}/{claim}")
        return self.claim_dir

    def config_data(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        if name == "missing":
            if optional:
                return None
            raise PodSpecError(f"{kind} {name!r}: Not Found")
        return {"ca.crt": b"CA", "K": b"v"}

    def service_account_token(self, pod: Any, audience: str | None, expiration_s: int) -> str:
        return f"token-for-{pod['metadata']['name']}"


def _pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    pod = json.loads(json.dumps(POD))
    pod["spec"]["volumes"] = volumes
    pod["spec"]["containers"][0]["volumeMounts"] = mounts
    return pod


def test_pvc_mounts_the_claims_host_directory(tmp_path: Path) -> None:
    api = FakeVolumeApi(tmp_path / "pv")
    pod = _pod(
        [{"name": "data", "persistentVolumeClaim": {"claimName": "pax-data"}}],
        [{"name": "data", "mountPath": "/mnt"}],
    )
    mounts = PodVolumes(pod, tmp_path / "pod", api).mounts(pod["spec"]["containers"][0])
    assert mounts == [Mount(tmp_path / "pv", "/mnt")]
    assert api.claims == ["ns/pax-data"]


def test_projected_service_account_volume_is_written(tmp_path: Path) -> None:
    sources = [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]
    pod = _pod(
        [{"name": "kube-api-access", "projected": {"sources": sources}}],
        [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
    )
    (mount,) = PodVolumes(pod, tmp_path / "pod", FakeVolumeApi(tmp_path)).mounts(pod["spec"]["containers"][0])
    assert (mount.source / "token").read_text() == "token-for-job-0"
    assert (mount.source / "ca.crt").read_text() == "CA"
    assert (mount.source / "namespace").read_text() == "ns"


@pytest.mark.parametrize(
    ("volume", "match"),
    [
        (
            {"name": "v", "nfs": {"server": "x", "path": "/"}},
            "nfs volumes are not provided by the process kubelet",
        ),
        ({"name": "v", "csi": {"driver": "d"}}, "csi volumes are not provided"),
        ({"name": "v", "configMap": {"name": "missing"}}, "configMap 'missing': Not Found"),
        ({"name": "v", "hostPath": {"path": "/nonexistent/pax-test", "type": "Directory"}}, "does not exist"),
        (
            {"name": "v", "configMap": {"name": "cm", "items": [{"key": "nope", "path": "p"}]}},
            "no key 'nope'",
        ),
    ],
)
def test_volumes_not_provided_fail_clearly(tmp_path: Path, volume: dict[str, Any], match: str) -> None:
    pod = _pod([volume], [{"name": "v", "mountPath": "/x"}])
    with pytest.raises(PodSpecError, match=match):
        PodVolumes(pod, tmp_path / "pod", FakeVolumeApi(tmp_path)).mounts(pod["spec"]["containers"][0])


def test_a_mount_without_a_volume_fails(tmp_path: Path) -> None:
    pod = _pod([], [{"name": "ghost", "mountPath": "/x"}])
    with pytest.raises(PodSpecError, match="volumeMount 'ghost' has no volume"):
        PodVolumes(pod, tmp_path / "pod", FakeVolumeApi(tmp_path)).mounts(pod["spec"]["containers"][0])


def test_sub_path_stays_inside_the_volume(tmp_path: Path) -> None:
    pod = _pod([{"name": "v", "emptyDir": {}}], [{"name": "v", "mountPath": "/x", "subPath": "../../etc"}])
    with pytest.raises(PodSpecError, match="subPath leaves the volume"):
        PodVolumes(pod, tmp_path / "pod", FakeVolumeApi(tmp_path)).mounts(pod["spec"]["containers"][0])


# -- provisioner, events, node, statuses --------------------------------------------------------------
def test_provisioned_volume_is_a_retained_host_path_pre_bound_to_the_claim(tmp_path: Path) -> None:
    claim = {
        "metadata": {"name": "pax-data", "namespace": "ns", "uid": "abc-123"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    pv = persistent_volume(claim, tmp_path / "pv")
    assert pv["metadata"]["name"] == volume_name("abc-123") == "pvc-abc-123"
    assert pv["spec"]["hostPath"]["path"] == str(tmp_path / "pv")
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["claimRef"]["uid"] == "abc-123"
    assert pv["spec"]["capacity"] == {"storage": "5Gi"}
    sc = storage_class()
    assert sc["metadata"]["name"] == STORAGE_CLASS
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_event_names_the_container() -> None:
    event = pod_event(POD, "node-a", WARNING, "Failed", "Error: boom", container="init")
    assert event["involvedObject"]["fieldPath"] == "spec.initContainers{init}"
    assert event["involvedObject"]["uid"] == "u-1"
    assert event["source"] == {"component": "kubelet", "host": "node-a"}
    assert event["type"] == "Warning" and event["reason"] == "Failed"


def test_node_registers_its_kubelet_endpoint() -> None:
    status = node_status("n", True, "KubeletReady", 10250)
    assert status["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    assert {"type": "InternalIP", "address": "127.0.0.1"} in status["addresses"]
    assert "daemonEndpoints" not in node_status("n", True, "KubeletReady", None)


def test_config_error_fails_the_pod_with_the_message() -> None:
    status = config_error_statuses(
        POD, "trainer", "container trainer: volume 'v': nfs volumes are not provided"
    )
    assert status["phase"] == "Failed" and status["reason"] == CONFIG_ERROR
    (trainer,) = status["containerStatuses"]
    assert trainer["state"]["waiting"] == {"reason": CONFIG_ERROR, "message": status["message"]}


# -- the TLS log server --------------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path: Path) -> Any:
    ca = pki.new_ca()
    ca.write(tmp_path / "pki", "ca")
    cert, key = pki.issue_serving_cert(ca, "kubelet", ["127.0.0.1"]).write(tmp_path / "pki", "kubelet")
    pki.issue_client_cert(ca, KUBELET_CLIENT_CN).write(tmp_path / "pki", "client")
    pki.issue_client_cert(ca, "someone-else").write(tmp_path / "pki", "other")
    log = tmp_path / "root" / "pods" / "ns" / "job-0" / "trainer.log"
    log.parent.mkdir(parents=True)
    for text in (b"run one\n", b"step 1\nstep 2\n"):
        runlog.mark_run_start(log, "u-1")
        with log.open("ab") as out:
            out.write(text)
    server = LogServer(
        tmp_path / "root",
        lambda ns, pod, c: False,
        cert_file=cert,
        key_file=key,
        client_ca_file=tmp_path / "pki" / "ca.crt",
    ).start()
    yield server, tmp_path / "pki"
    server.stop()


def _get(server: LogServer, pki_dir: Path, path: str, client: str = "client") -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    context.load_cert_chain(pki_dir / f"{client}.crt", pki_dir / f"{client}.key")
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=context), urllib.request.ProxyHandler({})
    )
    try:
        with opener.open(f"https://127.0.0.1:{server.port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_log_server_serves_current_previous_and_tail(served: Any) -> None:
    server, pki_dir = served
    assert _get(server, pki_dir, "/containerLogs/ns/job-0/trainer") == (200, "step 1\nstep 2\n")
    assert _get(server, pki_dir, "/containerLogs/ns/job-0/trainer?previous=true") == (200, "run one\n")
    assert _get(server, pki_dir, "/containerLogs/ns/job-0/trainer?tailLines=1&follow=true") == (
        200,
        "step 2\n",
    )
    code, body = _get(server, pki_dir, "/containerLogs/ns/job-0/sidecar")
    assert code == 404 and "not started" in body


def test_log_server_answers_only_the_apiserver(served: Any) -> None:
    server, pki_dir = served
    code, body = _get(server, pki_dir, "/containerLogs/ns/job-0/trainer", client="other")
    assert code == 403 and "someone-else" in body


def test_each_kubelet_on_a_machine_gets_its_own_pod_subnet() -> None:
    """Two stacks at once (cluster-up and make demo) must not hand out the same pod addresses."""
    first_lock, first = claim_pod_subnet()
    second_lock, second = claim_pod_subnet()
    try:
        assert first != second and first.startswith("127.10.") and second.endswith(".0/24")
    finally:
        first_lock.close()
    third_lock, third = claim_pod_subnet()  # the second is still held, the first was released
    third_lock.close()
    second_lock.close()
    assert third != second
