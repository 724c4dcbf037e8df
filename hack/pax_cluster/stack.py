"""The whole local stack in one object: control plane + Pax CRD/RBAC + operator + process kubelet.

Used by `make demo` and the e2e tier. The operator runs as a subprocess (`python -m pax_operator`)
authenticated as its own ServiceAccount with the RBAC from deploy/, never as system:masters.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OPERATOR_NAMESPACE = "pax-system"
OPERATOR_SERVICE_ACCOUNT = "pax-operator"
READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A component of the local stack failed to start."""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


class LocalStack:
    """Control plane, CRD + RBAC from deploy/, the operator and the process kubelet, under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        namespaces: tuple[str, ...] = (),
        scrape_interval_s: float = 2.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.namespaces = namespaces
        self.scrape_interval_s = scrape_interval_s
        self.extra_env = dict(extra_env or {})
        self.control_plane = ControlPlane(self.root / "control-plane")
        self.operator_log = self.root / "logs" / "operator.log"
        self.kubelet_log = self.root / "logs" / "kubelet.log"
        self.kubelet_root = self.root / "kubelet"
        self._operator: subprocess.Popen[bytes] | None = None
        self._kubelet: subprocess.Popen[bytes] | None = None
        self._liveness_port = procs.free_port()

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (for the user's kubectl)."""
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 60.0, check: bool = True) -> str:
        """Run the real kubectl against this stack as admin; returns stdout ('' on failure unless check)."""
        argv = [str(self.control_plane.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise StackError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def start(self) -> Self:
        """Start everything, bounded; on failure stop what started and raise."""
        try:
            self.control_plane.start()
            self.kubectl("apply", "-f", str(DEPLOY / "crds"))
            self.kubectl("apply", "-f", str(DEPLOY / "rbac"))
            self.kubectl("wait", "--for=condition=Established", "crd/paxjobs.pax.dev", "--timeout=30s")
            self._start_kubelet()
            self._start_operator()
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self, kubeconfig: Path) -> dict[str, str]:
        env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1", **self.extra_env)
        env.pop("KUBERNETES_SERVICE_HOST", None)
        return env

    def _start_operator(self) -> None:
        kubeconfig = self.control_plane.kubeconfig_for_service_account(
            OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT
        )
        argv = [
            sys.executable,
            "-m",
            "pax_operator",
            f"--liveness=http://127.0.0.1:{self._liveness_port}/healthz",
            f"--scrape-interval={self.scrape_interval_s}",
        ]
        for ns in self.namespaces:
            argv += ["-n", ns]
        self._operator = self._spawn(argv, self.operator_log, self._env(kubeconfig))
        self._wait(
            "operator",
            self._operator,
            self.operator_log,
            lambda: _http_ok(f"http://127.0.0.1:{self._liveness_port}/healthz"),
        )

    def _start_kubelet(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "pax_cluster.kubelet",
            f"--kubeconfig={self.kubeconfig}",
            f"--root={self.kubelet_root}",
        ]
        self._kubelet = self._spawn(argv, self.kubelet_log, self._env(self.kubeconfig))
        self._wait("process kubelet", self._kubelet, self.kubelet_log, self._node_ready)

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return "True" in out.split()

    @staticmethod
    def _spawn(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )

    @staticmethod
    def _wait(what: str, proc: subprocess.Popen[bytes], log: Path, ready: object) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{what} exited {proc.returncode}:\n{tail(log)}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise StackError(f"{what} not ready within {READY_TIMEOUT_S:.0f}s:\n{tail(log)}")

    def restart_operator(self) -> None:
        """SIGKILL the operator (no cleanup) and start a fresh one."""
        _kill(self._operator, graceful=False)
        self._start_operator()

    def stop(self) -> None:
        """Stop operator, kubelet (which stops its pods) and control plane; never leaves processes."""
        _kill(self._operator, graceful=True)
        _kill(self._kubelet, graceful=True, grace_s=30.0)
        self.control_plane.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file ('' if absent)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _kill(proc: subprocess.Popen[bytes] | None, *, graceful: bool, grace_s: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    if graceful:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=10)
