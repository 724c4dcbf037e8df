"""`python -m pax_cluster.cli up|down|status`: a detached local control plane under .cluster/."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pax_cluster.binaries import REPO_ROOT, BinariesNotFoundError
from pax_cluster.controlplane import ControlPlane, ControlPlaneError, read_state

DEFAULT_ROOT = REPO_ROOT / ".cluster"


def _up(root: Path, scheduler: bool) -> int:
    state = read_state(root)
    if state is not None and all(ControlPlane.attach(root).status().values()):
        print(f"already running at {state['server']}; export KUBECONFIG={root / 'kubeconfig'}")
        return 0
    if state is not None:
        ControlPlane.attach(root).stop()  # leftovers of a crashed cluster
    cp = ControlPlane(root, scheduler=scheduler, detach=True)
    cp.start()
    kubeconfig = root / "kubeconfig"
    shutil.copyfile(cp.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o600)
    print(f"control plane {cp.binaries.version} up at {cp.server} in {cp.start_seconds:.1f}s")
    print(f"  logs: {cp.log_dir}")
    print(f"  export KUBECONFIG={kubeconfig}")
    print("  kubectl get namespaces")
    print("  make cluster-down   # stop it")
    return 0


def _down(root: Path) -> int:
    if read_state(root) is None:
        print(f"no control plane running under {root}")
        return 0
    ControlPlane.attach(root).stop()
    (root / "kubeconfig").unlink(missing_ok=True)
    print("control plane stopped")
    return 0


def _status(root: Path) -> int:
    state = read_state(root)
    if state is None:
        print("not running")
        return 1
    status = ControlPlane.attach(root).status()
    print(f"server {state['server']} (Kubernetes {state['version']}), kubeconfig {root / 'kubeconfig'}")
    for name, ok in status.items():
        print(f"  {name:<24} {'running' if ok else 'NOT RUNNING'}")
    return 0 if all(status.values()) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pax-cluster` / `python -m pax_cluster.cli`."""
    parser = argparse.ArgumentParser(prog="pax-cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="default: %(default)s")
    parser.add_argument("--scheduler", action="store_true", help="also run kube-scheduler")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.command == "up":
            return _up(root, args.scheduler)
        if args.command == "down":
            return _down(root)
        return _status(root)
    except (BinariesNotFoundError, ControlPlaneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
