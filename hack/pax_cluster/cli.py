"""`python -m pax_cluster.cli up|down|status [--root DIR]`: the whole local stack, detached, under .cluster/.

`up` starts the control plane, every CRD, the operator (its own ServiceAccount), the process kubelet
(a Ready node serving `kubectl logs`, PVCs provisioned under its root) and the GCS emulator, then
leaves them running; on a running stack it is a no-op, and it restarts a crashed operator, kubelet or
emulator. `status` lists each process; `down` stops them all.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pax_contract.env import COORDINATOR_PORT, METRICS_PORT

from pax_cluster import procs
from pax_cluster.binaries import BinariesNotFoundError
from pax_cluster.controlplane import ControlPlane, ControlPlaneError, read_state
from pax_cluster.procs import REPO_ROOT
from pax_cluster.stack import BUCKET, NODE_NAME, LocalStack, StackError, read_stack_state

DEFAULT_ROOT = REPO_ROOT / ".cluster"
POD_PORTS = {  # the ports local pods bind on their own IPs, and who binds them (no TPU multi-slice here)
    COORDINATOR_PORT: "host 0's jax.distributed coordinator",
    METRICS_PORT: "every trainer's /metrics",
    6006: "the TensorBoard sidecar (tensorboard.port's default)",
}
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def _make_or_cli(root: Path, command: str) -> str:
    """How to run `command` for this root: the make target for the default root, else the module."""
    if root == DEFAULT_ROOT.resolve():
        return f"make cluster-{command}"
    return f"{sys.executable} -m pax_cluster.cli {command} --root {root}"


def _kubeconfig(root: Path) -> Path:
    return root / "kubeconfig"


def _summary(root: Path, stack: LocalStack) -> None:
    status = stack.status()
    for name, ok in status.items():
        component = stack.components.get(name)
        where = f"  {component.url}" if component is not None and component.url else ""
        print(f"  {name:<24} {'running' if ok else 'NOT RUNNING'}{where}")
    print(
        f"  node {NODE_NAME}: pods run as local processes; PVCs: hostPath volumes under {stack.kubelet_root}"
    )
    if stack.gcs is not None:
        print(f"  gs://{BUCKET} on the GCS emulator at {stack.gcs.url} (every pod gets its env)")
    print(f"  logs: {stack.log_dir} and {stack.control_plane.log_dir}")


def _warn_taken_ports() -> None:
    """Say which pod ports another process holds on every address: pods on them fail to start."""
    for port in procs.taken_on_every_address(sorted(POD_PORTS)):
        print(
            f"warning: another process listens on every address at port {port}, so no pod can bind it"
            f" ({POD_PORTS[port]}: such pods will fail); stop it or make it listen on 127.0.0.1 only"
            f" (who: ss -ltnp 'sport = :{port}')"
        )


def _next_steps(root: Path, stack: LocalStack) -> None:
    kubectl_dir = stack.control_plane.binaries.kubectl.parent  # the venv's, of the apiserver's version
    print("\nNext:")
    print(f"  export KUBECONFIG={_kubeconfig(root)} PATH={kubectl_dir}:$PATH")
    print("  kubectl apply -f deploy/samples/paxjob-lm-tiny-local.yaml")
    print("  kubectl get pj -w")
    print("  kubectl logs -f lm-tiny-local-0")
    print(f"  {_make_or_cli(root, 'status')}   |   {_make_or_cli(root, 'down')}")


def _up(root: Path) -> int:
    if read_stack_state(root) is not None:
        stack = LocalStack.attach(root)
        status = stack.status()
        crashed = [name for name, ok in status.items() if not ok]
        if not crashed:
            print(f"already running under {root}")
            _summary(root, stack)
            _warn_taken_ports()
            _next_steps(root, stack)
            return 0
        print(f"crashed: {', '.join(crashed)}")
        if any(name in CONTROL_PLANE for name in crashed):
            print(f"the control plane is down: {_make_or_cli(root, 'down')} && {_make_or_cli(root, 'up')}")
            return 1
        for name in crashed:
            print(f"restarting {name} (log: {stack.components[name].log})")
            stack.restart(name)
        _summary(root, stack)
        return 0
    if read_state(root) is not None:  # a control plane alone, from an older `cluster-up`
        ControlPlane.attach(root).stop()
    stack = LocalStack(root, detach=True, gcs=True)
    stack.start()
    shutil.copyfile(stack.kubeconfig, _kubeconfig(root))
    _kubeconfig(root).chmod(0o600)
    version = stack.control_plane.binaries.version
    print(f"local stack up under {root} (Kubernetes {version}, apiserver {stack.control_plane.server})")
    _summary(root, stack)
    _warn_taken_ports()
    _next_steps(root, stack)
    return 0


def _down(root: Path) -> int:
    stopped = False
    if read_stack_state(root) is not None:
        LocalStack.attach(root).stop()
        stopped = True
    if read_state(root) is not None:  # a control plane alone, from an older `cluster-up`
        ControlPlane.attach(root).stop()
        stopped = True
    _kubeconfig(root).unlink(missing_ok=True)
    print("local stack stopped" if stopped else f"nothing running under {root}")
    return 0


def _status(root: Path) -> int:
    if read_stack_state(root) is None:
        print(f"not running (start it: {_make_or_cli(root, 'up')})")
        return 1
    stack = LocalStack.attach(root)
    print(f"local stack under {root}, kubeconfig {_kubeconfig(root)}")
    _summary(root, stack)
    _warn_taken_ports()
    crashed = [name for name, ok in stack.status().items() if not ok]
    if crashed:
        print(f"crashed: {', '.join(crashed)} ({_make_or_cli(root, 'up')} restarts them)")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pax-cluster` / `python -m pax_cluster.cli`."""
    parser = argparse.ArgumentParser(prog="pax-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="default: %(default)s")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.command == "up":
            return _up(root)
        if args.command == "down":
            return _down(root)
        return _status(root)
    except (BinariesNotFoundError, ControlPlaneError, StackError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
