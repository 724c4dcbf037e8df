"""`ProcessKubelet`: a Node whose pods are local processes, composed of the node agent, the pod watch,
one runner per pod, the hostPath provisioner, the event recorder and (with TLS files) the log server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pax_cluster.kubelet.common import (
    MERGE,
    REQUEST_TIMEOUT_S,
    api_retry,
    container_log,
    kill_container,
    now,
    pod_dir,
)
from pax_cluster.kubelet.events import EventRecorder
from pax_cluster.kubelet.logserver import LogServer
from pax_cluster.kubelet.node import NodeAgent, claim_pod_subnet
from pax_cluster.kubelet.provisioner import HostPathProvisioner
from pax_cluster.kubelet.runlog import NoSuchRun, find_run, read_run
from pax_cluster.kubelet.runner import SIDECAR_GRACE_S, PodRunner
from pax_cluster.kubelet.volumes import decode_secret
from pax_cluster.kubelet.watch import PodWatch, bind
from pax_cluster.podenv import IpAllocator, PodSpecError, dns_names, render_hosts
from pax_cluster.procs import REPO_ROOT, StartStop, alive

log = logging.getLogger("pax_cluster.kubelet")
NODE_LOSS_S = 5.0
CONFIG_WAIT_S = 10.0  # how long a missing required ConfigMap/Secret is waited for
KUBELET_CONDITIONS = frozenset(
    {"PodScheduled", "Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers"}
)


@dataclass(frozen=True)
class ServingTls:
    """The log server's certificate and key, and the CA its clients' certificates must chain to."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path
    port: int = 0


def node_lost_status(message: str) -> dict[str, Any]:
    """A pod's status when its node (or kubelet) lost its processes: Failed, NodeLost, DisruptionTarget."""
    stamp = now()
    return {
        "phase": "Failed",
        "reason": "NodeLost",
        "message": message,
        "conditions": [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByPodGC",
                "message": "node lost",
                "lastTransitionTime": stamp,
            },
            {"type": "Ready", "status": "False", "lastTransitionTime": stamp},
        ],
    }


def kill_leftovers(directory: Path) -> list[int]:
    """SIGKILL the process groups of a pod directory's containers that still run; returns their pids.
    A pid counts only if its stdout is that container's log file (pids are reused)."""
    killed = []
    for pid_file in directory.glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            stdout = os.readlink(f"/proc/{pid}/fd/1")
        except (OSError, ValueError):
            continue
        if stdout == str(directory / f"{pid_file.stem}.log") and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


class ProcessKubelet(StartStop):
    """A Node whose pods are local processes. `start()` runs it in threads; `stop()` ends everything."""

    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        node_name: str = "pax-local",
        bin_dir: Path | None = None,
        namespaces: Collection[str] | None = None,
        tls: ServingTls | None = None,
        image_env: Mapping[str, str] | None = None,
    ) -> None:
        """`namespaces`: only bind and run pods there (tests sharing one apiserver); None = all.
        `tls`: serve container logs for `kubectl logs`. `image_env`: env every container gets first
        (what an image's ENV would set; e.g. the GCS emulator's address on the local stack)."""
        self.root = Path(root).resolve()
        self.node_name = node_name
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.image_env = dict(image_env or {})
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.hosts_file = self.root / "hosts"
        self._subnet_lock, self.pod_subnet = claim_pod_subnet()
        self.ips = IpAllocator(self.pod_subnet)
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.events = EventRecorder(self.core, node_name)
        self.provisioner = HostPathProvisioner(self.core, client.StorageV1Api(self.api), self.root)
        self.log_server = (
            LogServer(
                self.root,
                self.container_running,
                cert_file=tls.cert_file,
                key_file=tls.key_file,
                client_ca_file=tls.client_ca_file,
                port=tls.port,
            )
            if tls is not None
            else None
        )
        self.node = NodeAgent(self.core, node_name, self.log_server.port if self.log_server else None)
        self.watch = PodWatch(self.core, self._handle, self._forget)
        self._threads: list[threading.Thread] = []

    @property
    def node_ready(self) -> threading.Event:
        return self.node.ready

    @property
    def volume_api(self) -> ProcessKubelet:
        return self

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ProcessKubelet:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(render_hosts([]))
        if self.log_server is not None:
            self.log_server.start()
        self.provisioner.ensure_storage_class()
        self.node.register()
        self._settle_leftovers()
        loops = (
            (lambda: self.node.run_heartbeats(self.stopping), "heartbeat"),
            (lambda: self.watch.run(self.stopping), "pod-watch"),
        )
        for target, name in loops:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every pod (SIGTERM, then SIGKILL after `grace_s`) and the loops; leaves no processes."""
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.terminate(grace_s)
        deadline = time.monotonic() + grace_s + SIDECAR_GRACE_S + 5
        for runner in runners:
            if runner.thread is not None:
                runner.thread.join(timeout=max(0.1, deadline - time.monotonic()))
            runner.kill_all()
        self.watch.close()
        if self.log_server is not None:
            self.log_server.stop()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S)
        self._subnet_lock.close()

    # -- for tests and demos ------------------------------------------------------------------------
    def kill_container(self, namespace: str, pod: str, container: str, sig: int = signal.SIGKILL) -> int:
        """Signal one container's process group (a hard crash when SIGKILL); returns its pid."""
        return kill_container(self.root, namespace, pod, container, sig)

    def kill_pod(self, namespace: str, pod: str, sig: int = signal.SIGKILL) -> None:
        """Signal every container of a running pod, as an OOM killer or a crashing host would."""
        with self.lock:
            runners = [r for r in self.runners.values() if (r.namespace, r.name) == (namespace, pod)]
        for runner in runners:
            with runner.lock:
                containers = list(runner.containers.values())
            for running in containers:
                running.signal(sig)

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """A container's stdout+stderr so far, every run of every pod of this name (the log file)."""
        path = container_log(self.root, namespace, pod, container)
        return path.read_text(errors="replace") if path.exists() else ""

    def current_logs(self, namespace: str, pod: str, container: str, previous: bool = False) -> str:
        """What `kubectl logs [--previous]` shows: the current (or the previous) run only."""
        path = container_log(self.root, namespace, pod, container)
        try:
            return read_run(path, find_run(path, previous)).decode(errors="replace")
        except NoSuchRun:
            return ""

    def container_running(self, namespace: str, pod: str, container: str) -> bool:
        """Whether that container's current process runs (the log server's follow ends when not)."""
        with self.lock:
            runners = [r for r in self.runners.values() if (r.namespace, r.name) == (namespace, pod)]
        return any(r.running(container) for r in runners)

    # -- what pods get from their "image" and the cluster --------------------------------------------
    def image_paths(self) -> list[Path]:
        """What stands in for a container image: the project checkout and the venv commands run from."""
        venv = self.bin_dir.parent
        return [REPO_ROOT] if venv.is_relative_to(REPO_ROOT) else [REPO_ROOT, venv]

    def working_dir(self) -> Path:
        return REPO_ROOT

    def base_env(self) -> dict[str, str]:
        """What a container image would provide: PATH (the project's venv first), a locale, image_env. Like
        an image's ENV, not visible to $(VAR) in env values, command or args."""
        return {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
            **self.image_env,
        }

    def lookup(self, namespace: str, kind: str, name: str, key: str, optional: bool) -> str | None:
        """configMap/secret values for env resolution; `key` '' means all of them, as a JSON object (values
        may hold newlines: as KEY=VALUE lines, a value's line "X=1" became a variable of its own)."""
        raw = self.config_data(
            namespace, "configMap" if kind.startswith("configMap") else "secret", name, optional
        )
        if raw is None:
            return None
        data = {k: v.decode(errors="replace") for k, v in raw.items()}
        if not key:
            return json.dumps(data)
        if key not in data and not optional:
            raise PodSpecError(f"{kind} {name} has no key {key!r}")
        return data.get(key)

    def config_data(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """A ConfigMap's or Secret's data as bytes; None when optional and absent. A required one that is
        absent is waited for a little (kube-root-ca.crt appears just after its namespace), then an error."""
        deadline = time.monotonic() + CONFIG_WAIT_S
        while True:
            try:
                if kind == "configMap":
                    cm = self.core.read_namespaced_config_map(
                        name, namespace, _request_timeout=REQUEST_TIMEOUT_S
                    )
                    data = {k: v.encode() for k, v in (cm.data or {}).items()}
                    data.update(decode_secret(cm.binary_data))
                    return data
                secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT_S)
                return decode_secret(secret.data)
            except ApiException as err:
                if err.status == 404 and optional:
                    return None
                if err.status != 404 or time.monotonic() > deadline or self.stopping.is_set():
                    raise PodSpecError(f"{kind} {name!r}: {err.reason}") from err
            time.sleep(0.5)

    def service_account_token(self, pod: Mapping[str, Any], audience: str | None, expiration_s: int) -> str:
        """A TokenRequest token for the pod's ServiceAccount, bound to the pod."""
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": max(600, expiration_s),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if audience:
            spec["audiences"] = [audience]
        try:
            token = self.core.create_namespaced_service_account_token(
                account, meta["namespace"], {"spec": spec}, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as err:
            raise PodSpecError(f"token for serviceAccount {account!r}: {err.reason}") from err
        return str(token.status.token)

    def claim_path(self, namespace: str, claim: str) -> Path:
        return self.provisioner.claim_path(namespace, claim)

    def event(
        self, pod: Mapping[str, Any], kind: str, reason: str, message: str, container: str | None
    ) -> None:
        self.events.record(pod, kind, reason, message, container)

    # -- node ---------------------------------------------------------------------------------------
    def register_node(self, ready: bool = True, reason: str = "KubeletReady") -> None:
        self.node.register(ready, reason)

    def lose_node(self) -> None:
        """Node loss: SIGKILL every pod, NotReady, pods Failed with DisruptionTarget; then recover."""
        log.warning("simulating node loss: killing every pod")
        self.node.register(ready=False, reason="NodeLost")
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.lost.set()
            runner.kill_all()
        for runner in runners:
            self._patch_status(
                runner.namespace, runner.name, node_lost_status(f"node {self.node_name} was lost")
            )
        time.sleep(NODE_LOSS_S)
        self.node.register()
        log.warning("node recovered")

    def _settle_leftovers(self) -> None:
        """Pods an earlier kubelet on this node started (it crashed or was killed): their processes
        are SIGKILLed if still alive and the pods reported lost, never started a second time."""
        listing = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node_name}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        for pod in json.loads(listing.data)["items"]:
            meta, status = pod["metadata"], pod.get("status") or {}
            if self.namespaces is not None and meta["namespace"] not in self.namespaces:
                continue
            if status.get("phase") in ("Succeeded", "Failed") or not status.get("startTime"):
                continue
            killed = kill_leftovers(pod_dir(self.root, meta["namespace"], meta["name"]))
            log.warning(
                "pod %s/%s: left by an earlier kubelet; killed %s", meta["namespace"], meta["name"], killed
            )
            if not meta.get("deletionTimestamp"):
                message = "the process kubelet restarted: the pod's processes were lost"
                self._patch_status(meta["namespace"], meta["name"], node_lost_status(message))

    # -- pods ---------------------------------------------------------------------------------------
    def patch_pod_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch a pod's status, keeping conditions the kubelet does not own (DisruptionTarget)."""
        if "conditions" in status:  # a merge patch replaces the list
            status = {**status, "conditions": status["conditions"] + self.foreign_conditions(pod)}
        self._patch_status(pod["metadata"]["namespace"], pod["metadata"]["name"], status)

    @api_retry
    def _patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status}, _content_type=MERGE)
        except ApiException as err:
            if err.status != 404:
                raise

    def foreign_conditions(self, pod: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The pod's current conditions that a kubelet does not own (e.g. DisruptionTarget on eviction)."""
        meta = pod["metadata"]
        try:
            current = self.core.read_namespaced_pod(meta["name"], meta["namespace"], _preload_content=False)
        except ApiException:
            return []
        doc = json.loads(current.data)
        if doc["metadata"].get("uid") != meta.get("uid"):
            return []
        return [
            c for c in doc.get("status", {}).get("conditions") or [] if c["type"] not in KUBELET_CONDITIONS
        ]

    def _handle(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if self.namespaces is not None and meta["namespace"] not in self.namespaces:
            return
        status = pod.get("status") or {}
        if not spec.get("nodeName"):
            if (
                spec.get("schedulerName", "default-scheduler") == "default-scheduler"
                and not meta.get("deletionTimestamp")
                and self.node_ready.is_set()
            ):
                bind(self.core, pod, self.node_name)
            return
        if spec["nodeName"] != self.node_name:
            return
        uid = meta["uid"]
        with self.lock:
            runner = self.runners.get(uid)
        if meta.get("deletionTimestamp"):
            if runner is not None:
                runner.terminate(float(meta.get("deletionGracePeriodSeconds") or 0))
            # A runner already finished (e.g. its node was lost) will not call pod_finished again.
            if runner is None or runner.finished.is_set():
                self._delete_now(meta)
            return
        if runner is None and status.get("phase") not in ("Succeeded", "Failed") and self.node_ready.is_set():
            self._admit(pod)

    def _admit(self, pod: dict[str, Any]) -> None:
        namespace = pod["metadata"]["namespace"]
        runner = PodRunner(
            self,
            pod,
            self.ips.allocate(),
            grace_s=float(pod["spec"].get("terminationGracePeriodSeconds", 30)),
        )
        with self.lock:
            self.runners[pod["metadata"]["uid"]] = runner
        log.info("pod %s/%s: admitted with IP %s", namespace, pod["metadata"]["name"], runner.ip)
        runner.start()

    def pod_finished(self, runner: PodRunner) -> None:
        """After a pod's processes are gone: if it is being deleted, finish the deletion."""
        runner.finished.set()
        self.publish_hosts()
        if runner.terminating.is_set():
            self._delete_now(runner.pod["metadata"])

    def _delete_now(self, meta: dict[str, Any]) -> None:
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
            )
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("final delete of %s/%s failed: %s", meta["namespace"], meta["name"], err.reason)

    def _forget(self, pod: dict[str, Any]) -> None:
        with self.lock:
            runner = self.runners.pop(pod["metadata"]["uid"], None)
        if runner is not None:
            runner.terminate(0)
            runner.kill_all()
            self.ips.release(runner.ip)
            self.publish_hosts()
            shutil.rmtree(runner.dir / "volumes", ignore_errors=True)

    def publish_hosts(self) -> None:
        """Rewrite the shared hosts file in place (bind mounts pin its inode)."""
        entries: list[tuple[str, list[str]]] = []
        with self.lock:
            for runner in self.runners.values():
                if runner.finished.is_set() or runner.lost.is_set():
                    continue
                spec, meta = runner.pod["spec"], runner.pod["metadata"]
                names = dns_names(
                    spec.get("hostname") or meta["name"], spec.get("subdomain"), meta["namespace"]
                )
                entries.append((runner.ip, names))
            text = render_hosts(entries)
            with self.hosts_file.open("r+" if self.hosts_file.exists() else "w") as out:
                out.seek(0)
                out.write(text)
                out.truncate()
