"""The process kubelet: runs pods bound to one Node as local processes (dev/test tooling, not shipped).

    python -m pax_cluster.kubelet --kubeconfig .cluster/kubeconfig --root .cluster/kubelet

What it does like a kubelet: registers a Ready Node and heartbeats it; binds unscheduled pods to itself;
runs init containers, native sidecars and main containers with the pod's env resolved (value, fieldRef,
configMap/secret refs, $(VAR)); gives each pod its own loopback IP (127.10.x.y) and makes
`<hostname>.<subdomain>.<ns>.svc` names resolve through a hosts file bind-mounted over /etc/hosts in a
private mount + UTS namespace per container (emptyDir and hostPath volumes are bind-mounted too);
reports phases, container states, exit codes and termination messages; honours deletion (SIGTERM,
grace, SIGKILL). Signals for tests and demos: SIGUSR1 = node loss (every process SIGKILLed, pods Failed
with a DisruptionTarget condition, the node NotReady for a few seconds, then Ready again, as if replaced).
What it does not do: images (commands run from the project's venv), resource limits, probes,
runAsUser (processes run as the kubelet's user), `kubectl logs/exec` (logs are files under --root).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from pax_cluster.podenv import (
    Exit,
    IpAllocator,
    PodSpecError,
    container_status,
    dns_names,
    exit_code_of,
    expand,
    pod_phase,
    render_hosts,
    resolve_env,
    restart_delay,
    terminated_state,
    termination_message,
)

log = logging.getLogger("pax_cluster.kubelet")
REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_S = 10.0
NODE_LOSS_S = 5.0
SIDECAR_GRACE_S = 5.0
MERGE = "application/merge-patch+json"
KUBELET_CONDITIONS = frozenset(
    {"PodScheduled", "Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers"}
)
WATCH_S = 60
REQUEST_TIMEOUT_S = 30


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retryable(err: BaseException) -> bool:
    return isinstance(err, ApiException) and err.status in (409, 429, 500, 502, 503, 504)


api_retry = retry(
    retry=retry_if_exception(_retryable),
    stop=stop_after_attempt(6),
    wait=wait_exponential(multiplier=0.2, max=3),
    reraise=True,
)


def pod_dir(root: Path, namespace: str, name: str) -> Path:
    """Where a pod's logs, pid files, termination messages and emptyDirs live."""
    return root / "pods" / namespace / name


def container_log(root: Path, namespace: str, pod: str, container: str) -> Path:
    """The log file of one container (stdout and stderr)."""
    return pod_dir(root, namespace, pod) / f"{container}.log"


def kill_container(root: Path, namespace: str, pod: str, container: str, sig: int = signal.SIGKILL) -> int:
    """Signal a running container's process group (tests: a hard crash of one host); returns the pid."""
    pid = int((pod_dir(root, namespace, pod) / f"{container}.pid").read_text())
    os.killpg(pid, sig)
    return pid


@dataclass
class Container:
    """One running container process."""

    spec: dict[str, Any]
    proc: subprocess.Popen[bytes]
    started_at: str
    message_file: Path
    log_file: Path
    restart_count: int = 0

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def outcome(self) -> Exit:
        code = exit_code_of(self.proc.wait())
        written = self.message_file.read_text(errors="replace") if self.message_file.exists() else ""
        tail = self.log_file.read_text(errors="replace")[-16384:] if self.log_file.exists() else ""
        policy = self.spec.get("terminationMessagePolicy", "File")
        return Exit(code, self.started_at, now(), termination_message(written, tail, code, policy))


@dataclass
class PodRunner:
    """Runs one pod to completion in a thread; `terminate()` starts graceful deletion."""

    kubelet: ProcessKubelet
    pod: dict[str, Any]
    ip: str
    thread: threading.Thread | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    terminating: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    grace_s: float = 30.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def namespace(self) -> str:
        return self.pod["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    @property
    def dir(self) -> Path:
        return pod_dir(self.kubelet.root, self.namespace, self.name)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()

    def terminate(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.terminating.set()

    # -- the pod's life -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception:
            log.exception("pod %s/%s: kubelet error", self.namespace, self.name)
        finally:
            self.kubelet.pod_finished(self)

    def _run_pod(self) -> None:
        spec = self.pod["spec"]
        self.pod.setdefault("status", {}).update(podIP=self.ip, hostIP="127.0.0.1")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.kubelet.publish_hosts()
        started = now()
        self._patch_status(
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "startTime": started,
                "conditions": self._conditions(initialized=False, ready=False),
            }
        )
        init_statuses: list[dict[str, Any]] = []
        sidecars: list[Container] = []
        for spec_c in spec.get("initContainers") or []:
            if self.terminating.is_set() or self.lost.is_set():
                break
            running = self._launch(spec_c)
            if spec_c.get("restartPolicy") == "Always":  # native sidecar: keep it running
                sidecars.append(running)
                init_statuses.append(
                    container_status(
                        spec_c,
                        state={"running": {"startedAt": running.started_at}},
                        ready=True,
                        pid=running.proc.pid,
                    )
                )
                continue
            outcome = self._wait(running)
            init_statuses.append(
                container_status(spec_c, state={"terminated": terminated_state(outcome)}, ready=False)
            )
            if outcome.code != 0:
                self._finish("Failed", init_statuses, [], sidecars)
                return
        mains: list[Container] = []
        if not (self.terminating.is_set() or self.lost.is_set()):
            mains = [self._launch(c) for c in spec["containers"]]
        last_states: dict[str, dict[str, Any]] = {}  # by container: lastState.terminated
        waiting: dict[str, tuple[float, Exit]] = {}  # by container: (restart due, last outcome)
        self._patch_status(
            {
                "phase": "Running",
                "conditions": self._conditions(initialized=True, ready=True),
                "initContainerStatuses": init_statuses,
                "containerStatuses": self._main_statuses(mains, waiting, last_states),
            }
        )
        exits: dict[str, Exit] = {}
        policy = spec.get("restartPolicy", "Always")
        signalled = False
        while len(exits) < len(mains):
            stopping = self.terminating.is_set() or self.lost.is_set()
            for i, main in enumerate(mains):
                name = main.spec["name"]
                if name in exits:
                    continue
                if name in waiting:  # restart backoff
                    due = waiting[name][0]
                    if stopping:
                        exits[name] = waiting.pop(name)[1]
                    elif time.monotonic() >= due:
                        del waiting[name]
                        mains[i] = self._launch(main.spec, main.restart_count + 1)
                        self._patch_status(
                            {"containerStatuses": self._main_statuses(mains, waiting, last_states)}
                        )
                    continue
                if main.proc.poll() is None:
                    continue
                outcome = main.outcome()
                if not stopping and (policy == "Always" or (policy == "OnFailure" and outcome.code != 0)):
                    last_states[name] = terminated_state(outcome)
                    waiting[name] = (time.monotonic() + restart_delay(main.restart_count), outcome)
                    self._patch_status(
                        {"containerStatuses": self._main_statuses(mains, waiting, last_states)}
                    )
                else:
                    exits[name] = outcome
            if self.terminating.is_set() and not signalled:
                signalled = True
                threading.Thread(target=self._graceful_stop, args=(mains,), daemon=True).start()
            time.sleep(0.1)
        codes = {name: outcome.code for name, outcome in exits.items()}
        phase = pod_phase(policy, codes, len(mains)) or "Failed"
        final_main = [
            container_status(
                m.spec,
                state={"terminated": terminated_state(exits[m.spec["name"]])},
                ready=False,
                restart_count=m.restart_count,
                last_state=last_states.get(m.spec["name"]),
            )
            for m in mains
        ]
        self._finish(phase, init_statuses, final_main, sidecars)

    @staticmethod
    def _main_statuses(
        mains: list[Container], waiting: dict[str, tuple[float, Exit]], last_states: dict[str, dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """containerStatuses while the pod runs: running, or waiting in restart backoff."""
        statuses = []
        for m in mains:
            name = m.spec["name"]
            backoff = name in waiting
            state = (
                {"waiting": {"reason": "CrashLoopBackOff", "message": "restarting after backoff"}}
                if backoff
                else {"running": {"startedAt": m.started_at}}
            )
            statuses.append(
                container_status(
                    m.spec,
                    state=state,
                    ready=not backoff,
                    restart_count=m.restart_count + (1 if backoff else 0),
                    pid=None if backoff else m.proc.pid,
                    last_state=last_states.get(name),
                )
            )
        return statuses

    def _graceful_stop(self, mains: list[Container]) -> None:
        for main in mains:
            main.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline and any(m.proc.poll() is None for m in mains):
            time.sleep(0.1)
        for main in mains:
            if main.proc.poll() is None:
                main.signal(signal.SIGKILL)

    def _finish(
        self,
        phase: str,
        init_statuses: list[dict[str, Any]],
        mains: list[dict[str, Any]],
        sidecars: list[Container],
    ) -> None:
        for sidecar in sidecars:
            sidecar.signal(signal.SIGTERM)
        deadline = time.monotonic() + SIDECAR_GRACE_S
        while time.monotonic() < deadline and any(s.proc.poll() is None for s in sidecars):
            time.sleep(0.1)
        for sidecar in sidecars:
            sidecar.signal(signal.SIGKILL)
            outcome = sidecar.outcome()
            for status in init_statuses:
                if status["name"] == sidecar.spec["name"]:
                    status.update(ready=False, started=False, state={"terminated": terminated_state(outcome)})
        if self.lost.is_set():
            return  # the node-loss path reports this pod
        conditions = self._conditions(initialized=True, ready=False)
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "initContainerStatuses": init_statuses,
        }
        if mains:
            status["containerStatuses"] = mains
        self._patch_status(status)

    # -- processes ----------------------------------------------------------------------------------
    def _launch(self, spec_c: dict[str, Any], restart_count: int = 0) -> Container:
        name = spec_c["name"]
        message_file = self.dir / f"{name}.termination-log"
        message_file.unlink(missing_ok=True)
        message_file.touch()
        log_file = self.dir / f"{name}.log"
        env = resolve_env(
            self.pod,
            spec_c,
            lambda kind, ref, key, optional: self.kubelet.lookup(self.namespace, kind, ref, key, optional),
            self.kubelet.base_env(),
        )
        argv = [expand(a, env) for a in (spec_c.get("command") or []) + (spec_c.get("args") or [])]
        if not argv:
            raise PodSpecError(f"container {name}: no command (images are not run here)")
        script = self._namespace_script(spec_c, message_file)
        wrapped = [
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "bash",
            "-c",
            script,
            "pax-pod",
            *argv,
        ]
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                wrapped,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=spec_c.get("workingDir") or str(REPO),
                start_new_session=True,
            )
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        running = Container(spec_c, proc, now(), message_file, log_file, restart_count)
        with self.lock:
            self.containers[name] = running
        log.info(
            "pod %s/%s: started %s (pid %d): %s",
            self.namespace,
            self.name,
            name,
            proc.pid,
            shlex.join(argv)[:200],
        )
        return running

    def _namespace_script(self, spec_c: dict[str, Any], message_file: Path) -> str:
        """Bash run inside the new namespaces: hostname, hosts file, volumes, termination-message file,
        then exec the command. Every source is opened as a file descriptor before the first mount, since
        a volume mounted over /tmp (say) would otherwise hide sources that live under /tmp."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes") or []}
        mounts = [
            (source, mount["mountPath"])
            for mount in sorted(spec_c.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]))
            if (source := self._volume_source(volumes.get(mount["name"]))) is not None
        ]
        # The "image" (this checkout and its venv) must stay visible: a volume at /tmp would hide a
        # checkout under /tmp, so re-bind such paths onto themselves after the volumes.
        mounts += [
            (image, str(image))
            for image in self.kubelet.image_paths()
            if any(image.is_relative_to(target) for _, target in mounts)
        ]
        steps = [f"exec 9<>{shlex.quote(str(message_file))}"]
        steps += [f"exec {10 + i}<{shlex.quote(str(source))}" for i, (source, _) in enumerate(mounts)]
        steps += [
            f"hostname {shlex.quote(self.pod['spec'].get('hostname') or self.name)}",
            f"mount --bind {shlex.quote(str(self.kubelet.hosts_file))} /etc/hosts",
        ]
        for i, (_, target) in enumerate(mounts):
            quoted = shlex.quote(target)
            fd = 10 + i  # mount must not canonicalize: the fd's path may be hidden by now
            steps.append(f"mkdir -p {quoted} && mount --no-canonicalize --bind /proc/self/fd/{fd} {quoted}")
            steps.append(f"exec {fd}<&-")
        message_path = shlex.quote(spec_c.get("terminationMessagePath") or "/dev/termination-log")
        create = f'mkdir -p "$(dirname {message_path})" && touch {message_path}'
        steps.append(
            f"{{ [ -e {message_path} ] || {{ {create}; }}; }}"
            f" && mount --no-canonicalize --bind /proc/self/fd/9 {message_path} && exec 9>&-"
        )
        return " && ".join(steps) + ' && exec "$@"'

    def _volume_source(self, volume: dict[str, Any] | None) -> Path | None:
        if volume is None:
            return None
        if "emptyDir" in volume:
            path = self.dir / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            return path
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            path.mkdir(parents=True, exist_ok=True)
            return path
        return None  # other volume types are not provided by this kubelet

    def _wait(self, running: Container) -> Exit:
        while running.proc.poll() is None:
            if self.terminating.is_set() or self.lost.is_set():
                running.signal(signal.SIGKILL)
            time.sleep(0.1)
        return running.outcome()

    def kill_all(self) -> None:
        with self.lock:
            for running in self.containers.values():
                running.signal(signal.SIGKILL)

    # -- status -------------------------------------------------------------------------------------
    def _conditions(self, *, initialized: bool, ready: bool) -> list[dict[str, Any]]:
        stamp = now()

        def cond(kind: str, value: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": stamp}

        return [
            cond("PodScheduled", True),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ]

    def _patch_status(self, status: dict[str, Any]) -> None:
        if "conditions" in status:  # a merge patch replaces the list: keep others' (DisruptionTarget)
            status = {
                **status,
                "conditions": status["conditions"] + self.kubelet.foreign_conditions(self.pod),
            }
        self.kubelet.patch_pod_status(self.namespace, self.name, status)


class ProcessKubelet:
    """A Node whose pods are local processes. `start()` runs it in threads; `run()` blocks."""

    def __init__(
        self,
        kubeconfig: Path,
        root: Path,
        node_name: str = "pax-local",
        bin_dir: Path | None = None,
        namespaces: Collection[str] | None = None,
    ) -> None:
        """`namespaces`: only bind and run pods there (tests sharing one apiserver); None = all."""
        self.root = Path(root).resolve()
        self.node_name = node_name
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.bin_dir = bin_dir or Path(sys.executable).parent
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.hosts_file = self.root / "hosts"
        self.ips = IpAllocator()
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.node_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_response: Any = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ProcessKubelet:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text(render_hosts([]))
        self.register_node()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "pod-watch")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def run(self) -> None:
        self.start()
        while not self.stopping.wait(0.5):
            pass

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
        response = self._watch_response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the watch thread's read
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S)

    def __enter__(self) -> ProcessKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        """A container's stdout+stderr so far (`kubectl logs` needs a kubelet server; this has none)."""
        path = container_log(self.root, namespace, pod, container)
        return path.read_text(errors="replace") if path.exists() else ""

    def image_paths(self) -> list[Path]:
        """What stands in for a container image: the project checkout and the venv commands run from."""
        venv = self.bin_dir.parent
        return [REPO] if venv.is_relative_to(REPO) else [REPO, venv]

    def base_env(self) -> dict[str, str]:
        """What a container image would provide: PATH (the project's venv first) and a locale."""
        return {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "LANG": "C.UTF-8",
            "HOME": "/tmp",
        }

    # -- node ---------------------------------------------------------------------------------------
    def _node_status(self, ready: bool, reason: str) -> dict[str, Any]:
        stamp = now()
        return {
            "capacity": {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "110"},
            "allocatable": {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "110"},
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason,
                    "message": "process kubelet",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.2-process",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://",
                "kernelVersion": os.uname().release,
                "osImage": "local processes",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    @api_retry
    def register_node(self, ready: bool = True, reason: str = "KubeletReady") -> None:
        body = {
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "pax.dev/process-kubelet": "true",
                },
            }
        }
        try:
            self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_node_status(
            self.node_name, {"status": self._node_status(ready, reason)}, _content_type=MERGE
        )
        (self.node_ready.set if ready else self.node_ready.clear)()

    def _heartbeat_loop(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S):
            if self.node_ready.is_set():
                try:
                    self.register_node()
                except Exception as err:
                    log.warning("heartbeat failed: %s", err)

    def lose_node(self) -> None:
        """Node loss: SIGKILL every pod, NotReady, pods Failed with DisruptionTarget; then recover."""
        log.warning("simulating node loss: killing every pod")
        self.register_node(ready=False, reason="NodeLost")
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.lost.set()
            runner.kill_all()
        stamp = now()
        for runner in runners:
            self.patch_pod_status(
                runner.namespace,
                runner.name,
                {
                    "phase": "Failed",
                    "reason": "NodeLost",
                    "message": f"node {self.node_name} was lost",
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
                },
            )
        time.sleep(NODE_LOSS_S)
        self.register_node()
        log.warning("node recovered")

    # -- pods ---------------------------------------------------------------------------------------
    @api_retry
    def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status}, _content_type=MERGE)
        except ApiException as err:
            if err.status != 404:
                raise

    def foreign_conditions(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
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

    def _watch_loop(self) -> None:
        """List, then watch from the list's resourceVersion; any error or a 410 ERROR event re-lists."""
        while not self.stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(
                    _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
                )
                doc = json.loads(listing.data)
                for pod in doc["items"]:
                    self._handle(pod)
                self._watch(doc["metadata"]["resourceVersion"])
            except Exception as err:
                if not self.stopping.is_set():
                    log.info("pod watch restarting: %s", err)
                    time.sleep(0.5)

    def _watch(self, version: str) -> None:
        """One bounded watch; `stop()` shuts its connection down so the thread ends at once."""
        resp = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_S,
            _request_timeout=(REQUEST_TIMEOUT_S, WATCH_S + REQUEST_TIMEOUT_S),
            _preload_content=False,
        )
        self._watch_response = resp
        try:
            if self.stopping.is_set():
                return
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                    raise RuntimeError(f"watch error: {event['object'].get('message')}")
                if event["type"] == "DELETED":
                    self._forget(event["object"])
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self._handle(event["object"])
        finally:
            self._watch_response = None
            resp.close()
            resp.release_conn()

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
                self._bind(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        uid = meta["uid"]
        with self.lock:
            runner = self.runners.get(uid)
        if meta.get("deletionTimestamp"):
            if runner is not None:
                runner.terminate(float(meta.get("deletionGracePeriodSeconds") or 0))
            else:
                self._delete_now(meta)
            return
        if runner is None and status.get("phase") not in ("Succeeded", "Failed") and self.node_ready.is_set():
            self._admit(pod)

    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], err.reason)

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

    def lookup(self, namespace: str, kind: str, name: str, key: str, optional: bool) -> str | None:
        """configMap/secret values for env resolution; `key` '' means all of them as KEY=VALUE lines."""
        try:
            if kind in ("configMapKeyRef", "configMapRef"):
                data = self.core.read_namespaced_config_map(name, namespace).data or {}
            else:
                raw = self.core.read_namespaced_secret(name, namespace).data or {}
                data = {k: base64.b64decode(v).decode() for k, v in raw.items()}
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise PodSpecError(f"{kind} {name}: {err.reason}") from err
        if not key:
            return "\n".join(f"{k}={v}" for k, v in data.items())
        if key not in data and not optional:
            raise PodSpecError(f"{kind} {name} has no key {key!r}")
        return data.get(key)

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pax-kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="pods' logs, emptyDirs, hosts file")
    parser.add_argument("--node-name", default="pax-local")
    parser.add_argument("--namespace", action="append", help="only run pods here (repeatable; default all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubelet = ProcessKubelet(args.kubeconfig, args.root, args.node_name, namespaces=args.namespace)

    def on_term(signum: int, frame: object) -> None:
        kubelet.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(
        signal.SIGUSR1, lambda s, f: threading.Thread(target=kubelet.lose_node, daemon=True).start()
    )
    kubelet.start()
    while not kubelet.stopping.wait(0.5):
        pass
    kubelet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
