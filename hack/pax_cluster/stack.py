"""The whole local stack in one object: control plane, every CRD under deploy/crds and the RBAC from
deploy/rbac, the operator (as its own ServiceAccount), the process kubelet (a Ready node serving
`kubectl logs`, provisioning PVCs under its root) and, optionally, the GCS emulator with a ready bucket.

`make demo` and the e2e tier run it attached (children die with this process); `make cluster-up` runs it
detached under .cluster/ and `LocalStack.attach` finds it again (stack.json) for status and stop.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane, read_state
from pax_cluster.gcs_emulator import GcsEmulator
from pax_cluster.operator_process import OperatorError, OperatorProcess, operator_env

OPERATOR_NAMESPACE = "pax-system"
OPERATOR_SERVICE_ACCOUNT = "pax-operator"
NODE_NAME = "pax-local"
BUCKET = "pax-local"
READY_TIMEOUT_S = 60.0
STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """A component of the local stack failed to start."""


@dataclass
class Component:
    """A process of the stack besides the control plane (operator, kubelet, gcs)."""

    name: str
    pid: int
    exe: str
    log: str
    url: str = ""
    started: int | None = None  # procs.start_time: None in a stack.json written before it was kept

    def running(self, popen: subprocess.Popen[bytes] | None = None) -> bool:
        if popen is not None:
            return popen.poll() is None
        return procs.alive(self.pid, self.exe, self.started)


class LocalStack(procs.StartStop):
    """Control plane, CRDs + RBAC from deploy/, the operator, the process kubelet (+ GCS) under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        namespaces: tuple[str, ...] = (),
        scrape_interval_s: float = 2.0,
        extra_env: dict[str, str] | None = None,
        detach: bool = False,
        gcs: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.namespaces = namespaces
        self.scrape_interval_s = scrape_interval_s
        self.extra_env = dict(extra_env or {})
        self.detach = detach
        self.gcs = GcsEmulator() if gcs else None
        self.control_plane = ControlPlane(self.root / "control-plane", detach=detach)
        self.log_dir = self.root / "logs"
        self.operator_log = self.log_dir / "operator.log"
        self.kubelet_log = self.log_dir / "kubelet.log"
        self.gcs_log = self.log_dir / "gcs.log"
        self.kubelet_root = self.root / "kubelet"
        self.components: dict[str, Component] = {}
        self._popens: dict[str, subprocess.Popen[bytes]] = {}
        self._operator: OperatorProcess | None = None

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (for the user's kubectl)."""
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60.0, check: bool = True) -> str:
        """Run the real kubectl against this stack as admin; returns stdout ('' on failure unless check)."""
        done = self.control_plane.binaries.run_kubectl(self.kubeconfig, *args, input=input, timeout=timeout)
        if check and done.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start everything, bounded; on failure stop what started and raise."""
        try:
            self.control_plane.start()
            self.control_plane.apply(procs.DEPLOY / "crds", procs.DEPLOY / "rbac", established=procs.PAX_CRDS)
            if self.gcs is not None:
                self.start_gcs()
            self.start_kubelet()
            self.start_operator()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def start_gcs(self) -> None:
        """fake-gcs-server with its data under root/gcs and the bucket `pax-local`."""
        assert self.gcs is not None
        data = self.root / "gcs"
        data.mkdir(parents=True, exist_ok=True)
        self._spawn("gcs", self.gcs.server_argv(data), self.gcs_log, None, url=self.gcs.url)
        self._wait("gcs", self.gcs.answers)
        self.gcs.create_bucket(BUCKET)

    def start_kubelet(self) -> None:
        """The process kubelet as node `pax-local`, serving logs with a certificate from the local PKI."""
        cert, key = self.control_plane.issue_kubelet_serving_cert(NODE_NAME)
        argv = [
            sys.executable,
            "-m",
            "pax_cluster.kubelet",
            f"--kubeconfig={self.kubeconfig}",
            f"--root={self.kubelet_root}",
            f"--node-name={NODE_NAME}",
            f"--tls-cert-file={cert}",
            f"--tls-private-key-file={key}",
            f"--client-ca-file={self.control_plane.ca_file}",
        ]
        argv += [f"--image-env={k}={v}" for k, v in sorted(self.image_env().items())]
        self._spawn("kubelet", argv, self.kubelet_log, self._env(self.kubeconfig))
        self._wait("kubelet", self._node_ready)

    def start_operator(self) -> None:
        """The operator as ServiceAccount pax-system/pax-operator (the RBAC from deploy/rbac)."""
        kubeconfig = self.control_plane.kubeconfig_for_service_account(
            OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT
        )
        self._operator = OperatorProcess(
            kubeconfig,
            self.operator_log,
            namespaces=self.namespaces,
            scrape_interval_s=self.scrape_interval_s,
            extra_env=self.extra_env,
            detach=self.detach,
        )
        try:
            self._operator.start(READY_TIMEOUT_S)
        except OperatorError as err:
            raise StackError(str(err)) from err
        assert self._operator.proc is not None
        self._popens["operator"] = self._operator.proc
        self.components["operator"] = Component(
            "operator",
            self._operator.proc.pid,
            sys.executable,
            str(self.operator_log),
            self._operator.liveness_url,
            procs.start_time(self._operator.proc.pid),
        )

    def image_env(self) -> dict[str, str]:
        """Env the kubelet gives every container (the GCS emulator's, so gs:// job log dirs work)."""
        return self.gcs.env() if self.gcs is not None else {}

    def restart_operator(self) -> None:
        """SIGKILL the operator (no cleanup) and start a fresh one."""
        if self._operator is not None:
            self._operator.kill()
        self.start_operator()

    def stop(self) -> None:
        """Stop operator, kubelet (which stops its pods), GCS and control plane; never leaves processes."""
        for name, grace in (("operator", 10.0), ("kubelet", 30.0), ("gcs", 5.0)):
            component = self.components.pop(name, None)
            if component is None:
                continue
            popen = self._popens.pop(name, None)
            is_alive = (lambda pid, p=popen: p.poll() is None) if popen is not None else None
            procs.terminate(
                [component.pid],
                grace_s=grace,
                is_alive=is_alive or (lambda pid, c=component: c.running()),
            )
        self.control_plane.stop()
        (self.root / STATE_FILE).unlink(missing_ok=True)

    # -- a detached stack ---------------------------------------------------------------------------
    @classmethod
    def attach(cls, root: Path) -> LocalStack:
        """A handle on a stack started detached by another process (root/stack.json)."""
        state = read_stack_state(root)
        if state is None:
            raise StackError(f"no {STATE_FILE} under {root}: no stack started there")
        stack = cls(root, detach=True, gcs=bool(state.get("gcs_port")))
        if stack.gcs is not None:
            stack.gcs.port = int(state["gcs_port"])
        if read_state(stack.control_plane.root) is not None:
            stack.control_plane = ControlPlane.attach(stack.control_plane.root)
        stack.components = {c["name"]: Component(**c) for c in state["components"]}
        return stack

    def status(self) -> dict[str, bool]:
        """Whether each process of the stack is alive (control-plane components included)."""
        status = {name: ok for name, ok in self.control_plane.status().items()}
        for name, component in self.components.items():
            status[name] = component.running(self._popens.get(name))
        return status

    def restart(self, name: str) -> None:
        """Start a crashed operator, kubelet or GCS emulator again (the control plane keeps running)."""
        self.components.pop(name, None)
        {"operator": self.start_operator, "kubelet": self.start_kubelet, "gcs": self.start_gcs}[name]()
        self._write_state()

    def _write_state(self) -> None:
        state = {
            "gcs_port": self.gcs.port if self.gcs is not None else None,
            "kubeconfig": str(self.kubeconfig),
            "components": [asdict(c) for c in self.components.values()],
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    # -- internals ----------------------------------------------------------------------------------
    def _env(self, kubeconfig: Path) -> dict[str, str]:
        return operator_env(kubeconfig, self.extra_env)

    def _spawn(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None, url: str = ""
    ) -> None:
        popen = procs.spawn(argv, log, detach=self.detach, env=env, cwd=procs.REPO_ROOT)
        self._popens[name] = popen
        self.components[name] = Component(
            name, popen.pid, argv[0], str(log), url, procs.start_time(popen.pid)
        )

    def _wait(self, name: str, ready: Callable[[], bool]) -> None:
        log = Path(self.components[name].log)
        procs.wait_ready(name, self._popens[name], log, ready, READY_TIMEOUT_S, StackError)

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return out.strip() == "True"


def read_stack_state(root: Path) -> dict[str, Any] | None:
    """The stack.json of a detached stack under `root`, or None."""
    try:
        return dict(json.loads((Path(root) / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None
