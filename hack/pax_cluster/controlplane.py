"""A real local control plane (etcd, kube-apiserver, kube-controller-manager, optional kube-scheduler).

Started the way controller-runtime's envtest does, on 127.0.0.1 only, with client-cert authentication,
RBAC authorization, default admission (PodSecurity, ServiceAccount, ...) and service-account tokens.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import requests
import urllib3

from pax_cluster import pki, procs
from pax_cluster.binaries import Binaries, find_binaries
from pax_cluster.kubeconfig import write_kubeconfig

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
DEFAULT_CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "ttl-after-finished-controller",
    "job-controller",
    # Finishes what a real cluster's kube-controller-manager finishes: an unscheduled pod left terminating
    # (an apiserver killed between a graceless delete's two etcd writes: deletionTimestamp, then the delete)
    # and pods bound to a Node that no longer exists. Without it such a pod stays, holding its name.
    "pod-garbage-collector-controller",
)
STATE_FILE = "state.json"
KUBELET_CLIENT = "apiserver-kubelet-client"  # the apiserver's identity towards kubelets (kubectl logs)
_START_ATTEMPTS = 3


class ControlPlaneError(RuntimeError):
    """A component failed to start or become ready."""


@dataclass
class _Proc:
    name: str
    pid: int
    exe: str
    log: Path
    started: int | None = None  # procs.start_time: None in a state.json written before it was kept
    popen: subprocess.Popen[bytes] | None = None  # set when started by this process

    def running(self) -> bool:
        """Alive (own children are reaped here, so their exit status is kept)."""
        if self.popen is not None:
            return self.popen.poll() is None
        return procs.alive(self.pid, self.exe, self.started)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class ControlPlane(procs.StartStop):
    """etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler) under `root`.

    `root` holds pki/, etcd data, logs/, kubeconfigs and state.json (pids, ports). With `detach=True`
    the components outlive this Python process (for `pax_cluster.cli up`); otherwise they are killed by
    the kernel if it dies, and by an atexit hook if it exits without `stop()`.
    """

    def __init__(
        self,
        root: Path,
        *,
        scheduler: bool = False,
        detach: bool = False,
        controllers: Sequence[str] = DEFAULT_CONTROLLERS,
        extra_apiserver_args: Sequence[str] = (),
        binaries: Binaries | None = None,
        ready_timeout_s: float = 90.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.scheduler = scheduler
        self.detach = detach
        self.controllers = tuple(controllers)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self._binaries = binaries
        self.ready_timeout_s = ready_timeout_s
        self.pki_dir = self.root / "pki"
        self.log_dir = self.root / "logs"
        self.kubeconfig = self.root / "admin.kubeconfig"
        self.ports: dict[str, int] = {}
        self._procs: list[_Proc] = []
        self.start_seconds: float | None = None

    # -- properties --------------------------------------------------------------------------------
    @property
    def binaries(self) -> Binaries:
        """The binaries this control plane runs (located lazily)."""
        if self._binaries is None:
            self._binaries = find_binaries()
        return self._binaries

    @property
    def server(self) -> str:
        """The apiserver URL, e.g. https://127.0.0.1:41234."""
        if "apiserver" not in self.ports:
            raise ControlPlaneError("control plane not started")
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def ca_file(self) -> Path:
        """CA bundle that signed the apiserver serving cert (and every client cert)."""
        return self.pki_dir / "ca.crt"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Self:
        """Start every component and wait (bounded) until each is ready; on failure stop and raise."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        existing = read_state(self.root)
        if existing and any(procs.alive(p["pid"], p["exe"], p.get("started")) for p in existing["procs"]):
            raise ControlPlaneError(f"a control plane already runs under {self.root}; stop it first")
        self._ensure_pki()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once()
                break
            except ControlPlaneError as e:
                # Free ports are picked before the servers bind them: another process may win the race.
                if "address already in use" not in str(e) or attempt == _START_ATTEMPTS:
                    raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _start_once(self) -> None:
        shutil.rmtree(self.root / "etcd", ignore_errors=True)
        shutil.rmtree(self.log_dir, ignore_errors=True)
        names = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler"]
        self.ports = {n: procs.free_port() for n in names}
        if not self.detach:
            atexit.register(self.stop)
        try:
            self._spawn("etcd", self._etcd_args())
            self._spawn("kube-apiserver", self._apiserver_args())
            self._write_component_kubeconfigs()
            self._write_state()
            self._wait_ready("etcd", f"http://127.0.0.1:{self.ports['etcd']}/health", self._etcd_healthy)
            self._wait_ready("kube-apiserver", f"{self.server}/readyz")
            # Controllers exit at once if the apiserver does not answer yet: start them after it is ready.
            self._spawn("kube-controller-manager", self._controller_manager_args())
            if self.scheduler:
                self._spawn("kube-scheduler", self._scheduler_args())
            self._write_state()
            self._wait_ready(
                "kube-controller-manager", f"https://127.0.0.1:{self.ports['controller-manager']}/healthz"
            )
            if self.scheduler:
                self._wait_ready("kube-scheduler", f"https://127.0.0.1:{self.ports['scheduler']}/healthz")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component (SIGTERM, SIGKILL after a bound); idempotent; removes state.json."""
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        running = list(reversed(self._procs))
        self._procs = []
        # apiserver & controllers first (they need etcd to shut down cleanly), then etcd.
        for group in ([p for p in running if p.name != "etcd"], [p for p in running if p.name == "etcd"]):
            by_pid = {p.pid: p for p in group}
            procs.terminate(list(by_pid), is_alive=lambda pid, by_pid=by_pid: by_pid[pid].running())
        (self.root / STATE_FILE).unlink(missing_ok=True)

    # -- credentials -------------------------------------------------------------------------------
    def kubeconfig_for_user(self, user: str, groups: Sequence[str] = ()) -> Path:
        """Kubeconfig authenticating as `user` in `groups` with a client certificate."""
        ca = pki.CertKey.read(self.pki_dir, "ca")
        cred = pki.issue_client_cert(ca, user, groups)
        path = self.root / "users" / f"{_safe(user)}.kubeconfig"
        return write_kubeconfig(
            path,
            server=self.server,
            ca_pem=ca.cert_pem,
            user=user,
            client_cert_pem=cred.cert_pem,
            client_key_pem=cred.key_pem,
        )

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, *, expiration_s: int = 24 * 3600
    ) -> Path:
        """Kubeconfig with a TokenRequest token for ServiceAccount `namespace/name` (created if absent)."""
        api = self.admin_session()
        r = api.post(
            f"{self.server}/api/v1/namespaces/{namespace}/serviceaccounts",
            json={"metadata": {"name": name}},
            timeout=30,
        )
        if r.status_code not in (201, 409):
            raise ControlPlaneError(f"creating ServiceAccount {namespace}/{name}: {r.status_code} {r.text}")
        r = api.post(
            f"{self.server}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            json={
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_s},
            },
            timeout=30,
        )
        if r.status_code != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {r.status_code} {r.text}")
        token = r.json()["status"]["token"]
        path = self.root / "serviceaccounts" / f"{_safe(namespace)}.{_safe(name)}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        ca_pem = self.ca_file.read_bytes()
        return write_kubeconfig(
            path, server=self.server, ca_pem=ca_pem, user=user, token=token, namespace=namespace
        )

    def apply(self, *manifests: Path, established: Sequence[str] = (), timeout_s: float = 120.0) -> None:
        """`kubectl apply -f` each manifest (a file or a folder) as admin, then wait (bounded) until the CRDs
        named (e.g. 'paxjobs.pax.dev') are Established."""
        for manifest in manifests:
            self.binaries.run_kubectl(
                self.kubeconfig, "apply", "-f", str(manifest), timeout=timeout_s, check=True
            )
        if established:
            crds = [f"crd/{name}" for name in established]
            wait = ("wait", "--for=condition=Established", *crds, "--timeout=60s")
            self.binaries.run_kubectl(self.kubeconfig, *wait, timeout=90, check=True)

    def create_namespace(
        self, name: str, labels: Mapping[str, str] | None = None, timeout_s: float = 30.0
    ) -> None:
        """Create a namespace and wait (bounded) for its `default` ServiceAccount: the ServiceAccount
        admission plugin rejects pods until the controller made it."""
        api = self.admin_session()
        body = {"metadata": {"name": name, "labels": dict(labels or {})}}
        r = api.post(f"{self.server}/api/v1/namespaces", json=body, timeout=30)
        if r.status_code != 201:
            raise ControlPlaneError(f"creating namespace {name}: {r.status_code} {r.text}")
        url = f"{self.server}/api/v1/namespaces/{name}/serviceaccounts/default"
        try:
            procs.wait_for(
                f"ServiceAccount {name}/default", lambda: api.get(url, timeout=10).ok, timeout_s, 0.1
            )
        except procs.WaitTimeout as err:
            raise ControlPlaneError(str(err)) from err

    def admin_session(self) -> requests.Session:
        """A requests session authenticated as the admin (system:masters) against `server`."""
        s = requests.Session()
        s.trust_env = False  # else REQUESTS_CA_BUNDLE overrides `verify`, and proxies would apply
        s.cert = (str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        s.verify = str(self.ca_file)
        return s

    def version(self) -> dict[str, str]:
        """The apiserver's /version document."""
        r = self.admin_session().get(f"{self.server}/version", timeout=10)
        r.raise_for_status()
        return dict(r.json())

    # -- internals ---------------------------------------------------------------------------------
    def _ensure_pki(self) -> None:
        """Create the CA, serving/client certs and SA signer once; reused across restarts of `root`."""
        d = self.pki_dir
        if (d / "ca.crt").exists() and (d / "sa.pub").exists() and (d / "admin.key").exists():
            if not (d / f"{KUBELET_CLIENT}.key").exists():  # a root made before kubelets served logs
                self._issue_kubelet_client(pki.CertKey.read(d, "ca"))
            return
        ca = pki.new_ca()
        ca.write(d, "ca")
        sans = [
            "localhost",
            "127.0.0.1",
            "10.0.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        pki.issue_serving_cert(ca, "kube-apiserver", sans).write(d, "apiserver")
        pki.issue_client_cert(ca, "pax-admin", ["system:masters"]).write(d, "admin")
        # The controllers get system:masters too: test tooling, and it keeps every controller loop working.
        masters = ["system:masters"]
        pki.issue_client_cert(ca, "system:kube-controller-manager", masters).write(d, "controller-manager")
        pki.issue_client_cert(ca, "system:kube-scheduler", masters).write(d, "scheduler")
        self._issue_kubelet_client(ca)
        private, public = pki.new_service_account_signer()
        (d / "sa.key").touch(mode=0o600)
        (d / "sa.key").write_bytes(private)
        (d / "sa.pub").write_bytes(public)

    def _issue_kubelet_client(self, ca: pki.CertKey) -> None:
        # CN as kubeadm names it: the process kubelet's log server answers only this client.
        pki.issue_client_cert(ca, "kube-apiserver-kubelet-client", ["system:masters"]).write(
            self.pki_dir, KUBELET_CLIENT
        )

    def issue_kubelet_serving_cert(self, node: str) -> tuple[Path, Path]:
        """A serving certificate for a kubelet's endpoint on 127.0.0.1 (node name as a DNS SAN), signed
        by the cluster CA that the apiserver checks kubelets against; returns (cert, key) paths."""
        self._ensure_pki()
        ca = pki.CertKey.read(self.pki_dir, "ca")
        return pki.issue_serving_cert(ca, f"kubelet-{node}", [node, "localhost", "127.0.0.1"]).write(
            self.pki_dir / "kubelets", _safe(node)
        )

    def _write_component_kubeconfigs(self) -> None:
        ca_pem = self.ca_file.read_bytes()
        for name in ("admin", "controller-manager", "scheduler"):
            cred = pki.CertKey.read(self.pki_dir, name)
            path = self.kubeconfig if name == "admin" else self.root / f"{name}.kubeconfig"
            write_kubeconfig(
                path,
                server=self.server,
                ca_pem=ca_pem,
                user=name,
                client_cert_pem=cred.cert_pem,
                client_key_pem=cred.key_pem,
            )

    def _etcd_args(self) -> list[str]:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        return [
            str(self.binaries.etcd),
            "--name=pax",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=pax={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        d = self.pki_dir
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            f"--cert-dir={d}",
            f"--tls-cert-file={d / 'apiserver.crt'}",
            f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--secure-port={self.ports['apiserver']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--kubelet-client-certificate={d / f'{KUBELET_CLIENT}.crt'}",
            f"--kubelet-client-key={d / f'{KUBELET_CLIENT}.key'}",
            f"--kubelet-certificate-authority={d / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
            *self.extra_apiserver_args,
        ]

    def _kube_component_args(self, binary: Path, name: str) -> list[str]:
        """What kube-controller-manager and kube-scheduler (`name`) are both started with."""
        kc = self.root / f"{name}.kubeconfig"
        return [
            str(binary),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports[name]}",
            f"--cert-dir={self.root / f'{name}-certs'}",
        ]

    def _controller_manager_args(self) -> list[str]:
        return [
            *self._kube_component_args(self.binaries.kube_controller_manager, "controller-manager"),
            f"--controllers={','.join(self.controllers)}",
            f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
            f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials=false",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        return [*self._kube_component_args(self.binaries.kube_scheduler, "scheduler"), "--v=1"]

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        popen = procs.spawn(argv, log, detach=self.detach)
        started = procs.start_time(popen.pid)
        self._procs.append(
            _Proc(name=name, pid=popen.pid, exe=argv[0], log=log, started=started, popen=popen)
        )

    def _proc(self, name: str) -> _Proc:
        return next(p for p in self._procs if p.name == name)

    @staticmethod
    def _etcd_healthy(r: requests.Response) -> bool:
        return r.ok and r.json().get("health") == "true"

    def _wait_ready(
        self, name: str, url: str, healthy: Callable[[requests.Response], bool] | None = None
    ) -> None:
        """Poll `url` until healthy; raise with the log tail if the process dies or time runs out."""
        proc = self._proc(name)
        session = self.admin_session()
        if name != "kube-apiserver":
            session.verify = False  # controllers serve self-signed certs
        last = "no answer"

        def answered() -> bool:
            nonlocal last
            try:
                r = session.get(url, timeout=5)
            except requests.RequestException as e:
                last = type(e).__name__
                return False
            if (healthy or (lambda r: r.ok))(r):
                return True
            last = f"{r.status_code} {r.text[:500]}"
            return False

        with _quiet_insecure_warnings():
            procs.wait_ready(
                f"{name} at {url}",
                proc.popen,
                proc.log,
                answered,
                self.ready_timeout_s,
                lambda message: ControlPlaneError(f"{message}\nlast answer: {last}"),
                interval=0.1,
            )

    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "ports": self.ports,
            "kubeconfig": str(self.kubeconfig),
            "version": self.binaries.version,
            "procs": [
                {"name": p.name, "pid": p.pid, "exe": p.exe, "log": str(p.log), "started": p.started}
                for p in self._procs
            ],
        }
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def attach(cls, root: Path) -> ControlPlane:
        """A handle on a control plane started by another process (from root/state.json), e.g. to stop it."""
        state = read_state(root)
        if state is None:
            raise ControlPlaneError(f"no {STATE_FILE} under {root}: nothing started there")
        cp = cls(root, detach=True)
        cp.ports = {k: int(v) for k, v in state["ports"].items()}
        cp._procs = [
            _Proc(p["name"], int(p["pid"]), p["exe"], Path(p["log"]), p.get("started"))
            for p in state["procs"]
        ]
        cp.scheduler = any(p.name == "kube-scheduler" for p in cp._procs)
        return cp

    def status(self) -> dict[str, bool]:
        """Whether each component process is alive."""
        return {p.name: p.running() for p in self._procs}


def read_state(root: Path) -> dict[str, Any] | None:
    """The state.json of a control plane under `root`, or None."""
    try:
        return dict(json.loads((Path(root) / STATE_FILE).read_text()))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _quiet_insecure_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        yield
