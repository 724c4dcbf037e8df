"""One pod's life in a thread: prepare every container (env, argv, volumes), run init containers,
native sidecars and main containers, restart per restartPolicy, report statuses and events, stop on
deletion (SIGTERM, grace, SIGKILL). A `PodSpecError` fails the pod before anything runs."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pax_cluster.kubelet import runlog
from pax_cluster.kubelet.common import container_log, now, pod_dir
from pax_cluster.kubelet.events import NORMAL, WARNING
from pax_cluster.kubelet.sandbox import namespace_script, with_image_paths, wrapped_argv
from pax_cluster.kubelet.volumes import PodVolumes, VolumeApi
from pax_cluster.podenv import (
    TERMINATION_MESSAGE_LIMIT,
    Exit,
    PodSpecError,
    check_pod_spec,
    container_status,
    exit_code_of,
    expand,
    pod_phase,
    resolve_env,
    restart_delay,
    terminated_state,
    termination_message,
)

log = logging.getLogger("pax_cluster.kubelet")
SIDECAR_GRACE_S = 5.0
LOG_LIMIT_BYTES = 64 * 1024 * 1024  # per container log: a pod may print gigabytes onto the user's disk
LOG_KEEP_BYTES = 1024 * 1024  # what stays of a log over the limit: its end
CONFIG_ERROR = "CreateContainerConfigError"


class PodHost(Protocol):
    """What a pod runner needs from its kubelet."""

    root: Path
    hosts_file: Path
    volume_api: VolumeApi

    def publish_hosts(self) -> None: ...
    def lookup(self, namespace: str, kind: str, name: str, key: str, optional: bool) -> str | None: ...
    def base_env(self) -> dict[str, str]: ...
    def image_paths(self) -> list[Path]: ...
    def working_dir(self) -> Path: ...
    def patch_pod_status(self, pod: Mapping[str, Any], status: dict[str, Any]) -> None: ...
    def event(
        self, pod: Mapping[str, Any], kind: str, reason: str, message: str, container: str | None
    ) -> None: ...
    def pod_finished(self, runner: PodRunner) -> None: ...


@dataclass
class Plan:
    """A container ready to start: its command (wrapped in the sandbox) and environment."""

    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]


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
        """Signal its process group while it runs (once reaped, its pid may be another process's)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def outcome(self) -> Exit:
        code = exit_code_of(self.proc.wait())
        # Bounded reads: the container may have written gigabytes to either file.
        written = _read_head(self.message_file, TERMINATION_MESSAGE_LIMIT).decode(errors="replace")
        tail = runlog.read_tail(self.log_file, 16384).decode(errors="replace")
        policy = self.spec.get("terminationMessagePolicy", "File")
        return Exit(code, self.started_at, now(), termination_message(written, tail, code, policy))


def _read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a file (b"" if it does not exist)."""
    try:
        with path.open("rb") as f:
            return f.read(size)
    except FileNotFoundError:
        return b""


def conditions(*, initialized: bool, ready: bool) -> list[dict[str, Any]]:
    """The pod conditions a kubelet owns."""
    stamp = now()

    def cond(kind: str, value: bool) -> dict[str, Any]:
        return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": stamp}

    return [
        cond("PodScheduled", True),
        cond("Initialized", initialized),
        cond("ContainersReady", ready),
        cond("Ready", ready),
    ]


def config_error_statuses(pod: Mapping[str, Any], failed: str | None, message: str) -> dict[str, Any]:
    """Pod status when a container cannot be created: Failed, the container waiting with the reason."""

    def waiting(spec_c: Mapping[str, Any]) -> dict[str, Any]:
        if spec_c["name"] == failed:
            state = {"waiting": {"reason": CONFIG_ERROR, "message": message}}
        else:
            state = {"waiting": {"reason": "PodInitializing" if failed else CONFIG_ERROR}}
        return container_status(spec_c, state=state, ready=False)

    spec = pod["spec"]
    return {
        "phase": "Failed",
        "reason": CONFIG_ERROR,
        "message": message,
        "conditions": conditions(initialized=False, ready=False),
        "initContainerStatuses": [waiting(c) for c in spec.get("initContainers") or []],
        "containerStatuses": [waiting(c) for c in spec["containers"]],
    }


@dataclass
class Restarts:
    """Main containers' restart bookkeeping: in backoff (due time, last outcome), last terminated
    states, and final outcomes."""

    waiting: dict[str, tuple[float, Exit]] = field(default_factory=dict)
    last_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    exits: dict[str, Exit] = field(default_factory=dict)


@dataclass
class PodRunner:
    """Runs one pod to completion in a thread; `terminate()` starts graceful deletion."""

    host: PodHost
    pod: dict[str, Any]
    ip: str
    thread: threading.Thread | None = None
    containers: dict[str, Container] = field(default_factory=dict)
    terminating: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    grace_s: float = 30.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    plans: dict[str, Plan] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def dir(self) -> Path:
        return pod_dir(self.host.root, self.namespace, self.name)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self.thread.start()

    def terminate(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.terminating.set()

    def running(self, container: str) -> bool:
        """Whether the container's current process runs."""
        with self.lock:
            running = self.containers.get(container)
        return running is not None and running.proc.poll() is None

    def _stopping(self) -> bool:
        return self.terminating.is_set() or self.lost.is_set()

    # -- the pod's life -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._run_pod()
        except Exception as err:
            log.exception("pod %s/%s: kubelet error", self.namespace, self.name)
            self._fail(f"the process kubelet could not run the pod: {type(err).__name__}: {err}")
        finally:
            self.host.pod_finished(self)

    def _fail(self, message: str) -> None:
        """An error of ours (e.g. the OS refusing to start a process: arguments and environment over
        its limit): stop whatever started and report the pod Failed with the reason, never leave it
        Pending or Running with nothing behind it."""
        self.kill_all()
        self.host.event(self.pod, WARNING, "Failed", f"Error: {message}", None)
        if not self.lost.is_set():
            self._patch_status(
                {
                    "phase": "Failed",
                    "reason": "StartError",
                    "message": message[:TERMINATION_MESSAGE_LIMIT],
                    "conditions": conditions(initialized=False, ready=False),
                }
            )

    def _run_pod(self) -> None:
        self.pod.setdefault("status", {}).update(podIP=self.ip, hostIP="127.0.0.1")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host.publish_hosts()
        self._patch_status(
            {
                "phase": "Pending",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "startTime": now(),
                "conditions": conditions(initialized=False, ready=False),
            }
        )
        failed: str | None = None
        try:
            check_pod_spec(self.pod["spec"])
            volumes = PodVolumes(self.pod, self.dir, self.host.volume_api)
            for spec_c in (self.pod["spec"].get("initContainers") or []) + self.pod["spec"]["containers"]:
                failed = spec_c["name"]
                self.plans[failed] = self._plan(spec_c, volumes)
        except PodSpecError as err:
            message = f"container {failed}: {err}" if failed else str(err)
            log.warning("pod %s/%s: %s", self.namespace, self.name, message)
            self.host.event(self.pod, WARNING, "Failed", f"Error: {err}", failed)
            if not self.lost.is_set():
                self._patch_status(config_error_statuses(self.pod, failed, message))
            return
        self._run_containers()

    def _run_containers(self) -> None:
        init_statuses, sidecars, ok = self._run_init_containers()
        if not ok:
            self._finish("Failed", init_statuses, [], sidecars)
            return
        phase, final_main = self._run_main_containers(init_statuses, sidecars)
        self._finish(phase, init_statuses, final_main, sidecars)

    def _run_init_containers(self) -> tuple[list[dict[str, Any]], list[Container], bool]:
        """Init containers in order (native sidecars keep running): (statuses, sidecars, all succeeded)."""
        init_statuses: list[dict[str, Any]] = []
        sidecars: list[Container] = []
        for spec_c in self.pod["spec"].get("initContainers") or []:
            if self._stopping():
                break
            running = self._launch(spec_c)
            if spec_c.get("restartPolicy") == "Always":  # native sidecar: keep it running
                sidecars.append(running)
                state = {"running": {"startedAt": running.started_at}}
                init_statuses.append(container_status(spec_c, state=state, ready=True, pid=running.proc.pid))
                continue
            outcome = self._wait(running)
            init_statuses.append(
                container_status(spec_c, state={"terminated": terminated_state(outcome)}, ready=False)
            )
            if outcome.code != 0:
                self._report_exit(spec_c["name"], outcome)
                return init_statuses, sidecars, False
        return init_statuses, sidecars, True

    def _run_main_containers(
        self, init_statuses: list[dict[str, Any]], sidecars: list[Container]
    ) -> tuple[str, list[dict[str, Any]]]:
        """Main containers until each has exited for good (restartPolicy), native sidecars restarted
        whenever they exit meanwhile; (phase, final statuses)."""
        mains: list[Container] = (
            [] if self._stopping() else [self._launch(c) for c in self.pod["spec"]["containers"]]
        )
        restarts = Restarts()
        self._patch_status(
            {
                "phase": "Running",
                "conditions": conditions(initialized=True, ready=True),
                "initContainerStatuses": init_statuses,
                "containerStatuses": self._main_statuses(mains, restarts),
            }
        )
        policy = self.pod["spec"].get("restartPolicy", "Always")
        signalled = False
        sidecar_restarts = Restarts()
        while len(restarts.exits) < len(mains):
            for i in range(len(mains)):
                self._step(mains, i, restarts, policy)
            for j in range(len(sidecars)):
                self._step_sidecar(sidecars, j, sidecar_restarts, init_statuses)
            if self.terminating.is_set() and not signalled:
                signalled = True
                threading.Thread(target=self._graceful_stop, args=(mains,), daemon=True).start()
            self._bound_logs()
            time.sleep(0.1)
        codes = {name: outcome.code for name, outcome in restarts.exits.items()}
        phase = pod_phase(policy, codes, len(mains)) or "Failed"
        final = [
            container_status(
                m.spec,
                state={"terminated": terminated_state(restarts.exits[m.spec["name"]])},
                ready=False,
                restart_count=m.restart_count,
                last_state=restarts.last_states.get(m.spec["name"]),
            )
            for m in mains
        ]
        return phase, final

    def _step(self, mains: list[Container], i: int, restarts: Restarts, policy: str) -> None:
        """One look at main container `i`: restart it when its backoff is due, or record how it ended."""
        main, stopping = mains[i], self._stopping()
        name = main.spec["name"]
        if name in restarts.exits:
            return
        if name in restarts.waiting:  # restart backoff
            if stopping:
                restarts.exits[name] = restarts.waiting.pop(name)[1]
            elif time.monotonic() >= restarts.waiting[name][0]:
                del restarts.waiting[name]
                mains[i] = self._launch(main.spec, main.restart_count + 1)
                self._patch_status({"containerStatuses": self._main_statuses(mains, restarts)})
            return
        if main.proc.poll() is None:
            return
        outcome = main.outcome()
        if stopping or not (policy == "Always" or (policy == "OnFailure" and outcome.code != 0)):
            if not stopping:
                self._report_exit(name, outcome)
            restarts.exits[name] = outcome
            return
        self._back_off(main, outcome, restarts)
        self._patch_status({"containerStatuses": self._main_statuses(mains, restarts)})

    def _back_off(self, container: Container, outcome: Exit, restarts: Restarts) -> None:
        """Report `container`'s exit and schedule its restart after the kubelet's backoff (with the event)."""
        name = container.spec["name"]
        self._report_exit(name, outcome)
        restarts.last_states[name] = terminated_state(outcome)
        delay = restart_delay(container.restart_count)
        restarts.waiting[name] = (time.monotonic() + delay, outcome)
        message = f"Back-off {delay:.0f}s restarting failed container {name} in pod {self.name}"
        self.host.event(self.pod, WARNING, "BackOff", message, name)

    def _step_sidecar(
        self, sidecars: list[Container], j: int, restarts: Restarts, init_statuses: list[dict[str, Any]]
    ) -> None:
        """One look at native sidecar `j` while the main containers run: one that exited is restarted
        after a backoff, as a kubelet does (restartPolicy Always); its status says so meanwhile."""
        sidecar = sidecars[j]
        name = sidecar.spec["name"]
        if self._stopping():
            return
        if name in restarts.waiting:
            if time.monotonic() < restarts.waiting[name][0]:
                return
            del restarts.waiting[name]
            sidecars[j] = sidecar = self._launch(sidecar.spec, sidecar.restart_count + 1)
            state: dict[str, Any] = {"running": {"startedAt": sidecar.started_at}}
            ready, pid = True, sidecar.proc.pid
        elif sidecar.proc.poll() is None:
            return
        else:
            self._back_off(sidecar, sidecar.outcome(), restarts)
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": "restarting after backoff"}}
            ready, pid = False, None
        restart_count = sidecar.restart_count + (0 if ready else 1)
        for i, status in enumerate(init_statuses):
            if status["name"] == name:
                init_statuses[i] = container_status(
                    sidecar.spec,
                    state=state,
                    ready=ready,
                    restart_count=restart_count,
                    pid=pid,
                    last_state=restarts.last_states.get(name),
                )
        self._patch_status({"initContainerStatuses": init_statuses})

    def _report_exit(self, name: str, outcome: Exit) -> None:
        if outcome.code != 0:
            detail = f": {outcome.message.strip().splitlines()[-1][:200]}" if outcome.message.strip() else ""
            self.host.event(
                self.pod,
                WARNING,
                "Failed",
                f"Error: container {name} exited with code {outcome.code}{detail}",
                name,
            )

    @staticmethod
    def _main_statuses(mains: list[Container], restarts: Restarts) -> list[dict[str, Any]]:
        """containerStatuses while the pod runs: running, or waiting in restart backoff."""
        statuses = []
        for m in mains:
            name = m.spec["name"]
            backoff = name in restarts.waiting
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
                    last_state=restarts.last_states.get(name),
                )
            )
        return statuses

    def _graceful_stop(self, mains: list[Container]) -> None:
        for main in mains:
            if main.proc.poll() is None:
                self.host.event(
                    self.pod, NORMAL, "Killing", f"Stopping container {main.spec['name']}", main.spec["name"]
                )
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
            if sidecar.proc.poll() is None:
                name = sidecar.spec["name"]
                self.host.event(self.pod, NORMAL, "Killing", f"Stopping container {name}", name)
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
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions(initialized=True, ready=False),
            "initContainerStatuses": init_statuses,
        }
        if mains:
            status["containerStatuses"] = mains
        self._patch_status(status)

    # -- processes ----------------------------------------------------------------------------------
    def _plan(self, spec_c: dict[str, Any], volumes: PodVolumes) -> Plan:
        """Everything a container needs to start; `PodSpecError` if the kubelet cannot provide it."""
        name = spec_c["name"]

        def lookup(kind: str, ref: str, key: str, optional: bool) -> str | None:
            return self.host.lookup(self.namespace, kind, ref, key, optional)

        env = resolve_env(self.pod, spec_c, lookup)  # the $(VAR) table: the image's env is not in it
        argv = [expand(a, env) for a in (spec_c.get("command") or []) + (spec_c.get("args") or [])]
        if not argv:
            raise PodSpecError(
                "no command (images are not run here: the command runs from the project's venv)"
            )
        mounts = with_image_paths(volumes.mounts(spec_c), self.host.image_paths())
        script = namespace_script(
            hostname=self.pod["spec"].get("hostname") or self.name,
            hosts_file=self.host.hosts_file,
            message_file=self.dir / f"{name}.termination-log",
            termination_path=spec_c.get("terminationMessagePath"),
            mounts=mounts,
            working_dir=spec_c.get("workingDir"),
        )
        return Plan(spec_c, wrapped_argv(script, argv), {**self.host.base_env(), **env})

    def _launch(self, spec_c: dict[str, Any], restart_count: int = 0) -> Container:
        name = spec_c["name"]
        plan = self.plans[name]
        message_file = self.dir / f"{name}.termination-log"
        message_file.unlink(missing_ok=True)
        message_file.touch()
        log_file = container_log(self.host.root, self.namespace, self.name, name)
        runlog.mark_run_start(log_file, str(self.pod["metadata"].get("uid", "")))
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                plan.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=plan.env,
                cwd=str(self.host.working_dir()),  # the pod's workingDir is entered inside its namespace
                start_new_session=True,
            )
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        running = Container(spec_c, proc, now(), message_file, log_file, restart_count)
        with self.lock:
            self.containers[name] = running
        # As written in the spec: expanded, $(VAR) may hold a Secret's value (kept out of the log).
        command = shlex.join((spec_c.get("command") or []) + (spec_c.get("args") or []))
        log.info(
            "pod %s/%s: started %s (pid %d): %s", self.namespace, self.name, name, proc.pid, command[:200]
        )
        self.host.event(self.pod, NORMAL, "Started", f"Started container {name} (pid {proc.pid})", name)
        return running

    def _wait(self, running: Container) -> Exit:
        while running.proc.poll() is None:
            if self._stopping():
                running.signal(signal.SIGKILL)
            self._bound_logs()
            time.sleep(0.1)
        self._bound_logs()
        return running.outcome()

    def _bound_logs(self) -> None:
        """Every container log of this pod under LOG_LIMIT_BYTES (`runlog.bound`)."""
        with self.lock:
            logs = {c.log_file for c in self.containers.values()}
        for log_file in logs:
            dropped = runlog.bound(log_file, LOG_LIMIT_BYTES, LOG_KEEP_BYTES)
            if dropped:
                log.info(
                    "pod %s/%s: %s over its limit, %d bytes dropped",
                    self.namespace,
                    self.name,
                    log_file.name,
                    dropped,
                )

    def kill_all(self) -> None:
        with self.lock:
            for running in self.containers.values():
                running.signal(signal.SIGKILL)

    # -- status -------------------------------------------------------------------------------------
    def _patch_status(self, status: dict[str, Any]) -> None:
        self.host.patch_pod_status(self.pod, status)
