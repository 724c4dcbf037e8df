"""The operator when the control plane misbehaves: the apiserver killed and started again (its watch cache
gone, etcd compacted meanwhile: every watch is answered 410 and relists), changes it could not see while cut
off, throttling (429 + Retry-After) and hanging requests. Real faults where they can be (the apiserver
process, etcd's compaction API); a fault-injecting HTTP proxy in front of the apiserver for the rest."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fault_proxy import Fault, FaultProxy
from pax_cluster.controlplane import ControlPlane
from paxjob_harness import GROUP, OPERATOR_NAMESPACE, PLURAL, VERSION, OperatorProcess, Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration
RECOVERY_TIMEOUT_S = 90.0  # the informers' retry backoff is capped at 30 s; a relist and a reconcile follow


def restart_apiserver(cp: ControlPlane, *, compact: bool = True) -> float:
    """SIGKILL the kube-apiserver, compact etcd to its current revision while it is down, start it again on
    the same port and etcd; the seconds it was down."""
    proc = cp._proc("kube-apiserver")
    down = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.popen is not None
    proc.popen.wait(timeout=30)
    cp._procs.remove(proc)
    if compact:
        compact_etcd(cp)
    cp._spawn("kube-apiserver", cp._apiserver_args())
    cp._write_state()
    cp._wait_ready("kube-apiserver", f"{cp.server}/readyz")
    return time.monotonic() - down


def compact_etcd(cp: ControlPlane) -> int:
    """Compact etcd's history up to its current revision (what the apiserver does every 5 minutes)."""
    etcd = requests.Session()
    etcd.trust_env = False
    url = f"http://127.0.0.1:{cp.ports['etcd']}/v3/kv"
    key = base64.b64encode(b"/registry/").decode()
    revision = int(
        etcd.post(f"{url}/range", json={"key": key, "limit": 1}, timeout=10).json()["header"]["revision"]
    )
    answer = etcd.post(f"{url}/compaction", json={"revision": revision, "physical": True}, timeout=30)
    answer.raise_for_status()
    return revision


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    started = FaultProxy(control_plane.server, control_plane.ca_file).start()
    try:
        yield started
    finally:
        started.heal()
        started.release()
        started.stop()


def _operator(
    kubeconfig: Path, namespace: str, tmp_path: Path, extra: tuple[str, ...] = ()
) -> OperatorProcess:
    return OperatorProcess(kubeconfig, namespace, tmp_path / "operator.log", extra_args=extra).start()


@pytest.fixture
def proxied_kubeconfig(pax_installed: Path, proxy: FaultProxy, tmp_path: Path) -> Path:
    """The operator's ServiceAccount kubeconfig, through the fault proxy."""
    return proxy.kubeconfig(pax_installed, tmp_path / "proxied.kubeconfig")


def _stop(process: OperatorProcess) -> None:
    process.dump_stacks()
    process.kill()
    print(f"--- operator log tail ---\n{process.log_tail(40)}")


def _delete(pax: Pax, name: str) -> None:
    pax.custom.delete_namespaced_custom_object(GROUP, VERSION, pax.namespace, PLURAL, name)
    wait_for(f"{name} deleted", lambda: pax.get(name) is None, 30)


def _owner_uids(pax: Pax, job: str) -> set[str]:
    return {owner["uid"] for pod in pax.pods(job) for owner in pod["metadata"].get("ownerReferences", [])}


def test_changes_missed_while_cut_off_and_an_apiserver_restart_are_caught_up(
    control_plane: ControlPlane,
    proxy: FaultProxy,
    proxied_kubeconfig: Path,
    pax: Pax,
    namespace: str,
    tmp_path: Path,
) -> None:
    """While the operator cannot reach the apiserver: one PaxJob is deleted, one deleted and created again
    under its name, one created; then the apiserver is killed, etcd compacted, the apiserver started again.
    Once reachable, the operator relists (410), reconciles the new jobs, and leaves the untouched one's pods
    alone (no second gang)."""
    operator = _operator(proxied_kubeconfig, namespace, tmp_path)
    try:
        for name in ("keep", "gone", "swap"):
            pax.create(name, cpu_job(2))
        kept = {p["metadata"]["uid"] for p in pax.wait_pods("keep", 2, 0)}
        pax.wait_pods("gone", 2, 0)
        pax.wait_pods("swap", 2, 0)

        proxy.cut()
        _delete(pax, "gone")
        _delete(pax, "swap")
        swapped = pax.create("swap", cpu_job(2))["metadata"]["uid"]
        pax.create("new", cpu_job(2))
        downtime = restart_apiserver(control_plane)
        healed = time.monotonic()
        proxy.heal()

        pax.wait_pods("new", 2, 0, timeout=RECOVERY_TIMEOUT_S)
        recovered = time.monotonic() - healed
        wait_for("swap's gang is the new PaxJob's", lambda: _owner_uids(pax, "swap") == {swapped}, 60)
        pax.wait_pods("swap", 2, 0, timeout=60)
        wait_for("gone's pods collected", lambda: not pax.pods("gone"), 60)
        assert {p["metadata"]["uid"] for p in pax.pods("keep")} == kept  # no second gang
        assert pax.status("new").get("phase") == "Pending"
        relists = proxy.answered("GET", r"/paxjobs\?(?!.*watch=)")
        assert any(s.at > healed for s in relists), "the PaxJob informer did not list again"
        assert operator.proc is not None and operator.proc.poll() is None
        reached = f"new PaxJob's pods {recovered:.1f}s after the operator could reach it"
        print(f"apiserver down {downtime:.1f}s; {reached}")
    finally:
        _stop(operator)


RETRY_AFTER_S = 4


def _pod_posts(namespace: str) -> str:
    return rf"^/api/v1/namespaces/{namespace}/pods(\?|$)"


def _named(job: str) -> str:
    """A pod creation body of this job's gang."""
    return rf'"name":\s*"{job}-\d+"'


def test_throttled_writes_wait_for_retry_after_and_never_hold_up_other_jobs(
    proxy: FaultProxy, proxied_kubeconfig: Path, pax: Pax, namespace: str, tmp_path: Path
) -> None:
    """API Priority and Fairness answers 429 with Retry-After: the throttled job is tried again no sooner
    than the apiserver asked (not after the work queue's 0.5 s first backoff), and the other jobs go on;
    another's status writes fail with 503 twice: retried, its gang is not created twice."""
    operator = _operator(proxied_kubeconfig, namespace, tmp_path)
    try:
        proxy.add(Fault("POST", _pod_posts(namespace), 429, RETRY_AFTER_S, times=2, body=_named("slow")))
        unavailable = proxy.add(Fault("PUT", r"/paxjobs/other/status(\?|$)", 503, times=2))
        pax.create("slow", cpu_job(2))
        pax.create("other", cpu_job(2))
        pax.wait_pods("slow", 2, 0, timeout=60)
        pax.wait_pods("other", 2, 0, timeout=60)
        throttled = [
            s for s in proxy.answered("POST", _pod_posts(namespace), _named("slow")) if s.status == 429
        ]
        created = [
            s for s in proxy.answered("POST", _pod_posts(namespace), _named("slow")) if s.status == 201
        ]
        assert len(throttled) == 2 and len(created) == 2
        waited = min(s.at for s in created) - max(s.at for s in throttled)
        assert waited >= RETRY_AFTER_S - 0.2, f"retried {waited:.1f}s after a 429 asking for {RETRY_AFTER_S}s"
        other = proxy.answered("POST", _pod_posts(namespace), _named("other"))
        assert other and max(s.at for s in other) < min(s.at for s in created)  # not held up by "slow"
        pax.wait_status("other", "Pending with 2 hosts", lambda s: s.get("hosts") == 2, timeout=60)
        assert unavailable.hits == 2
        assert len([s for s in other if s.status == 201]) == 2 and len(pax.pods("other")) == 2
    finally:
        _stop(operator)


def test_a_job_whose_requests_hang_holds_up_no_other_job(
    proxy: FaultProxy, proxied_kubeconfig: Path, pax: Pax, namespace: str, tmp_path: Path
) -> None:
    """Every pod creation of one 16-host job hangs (as behind a stuck admission webhook): another job's
    gang is created while they still hang, not once the client's 30 s timeout has freed the threads the
    stuck job's requests held."""
    operator = _operator(proxied_kubeconfig, namespace, tmp_path)
    try:
        proxy.add(Fault("POST", _pod_posts(namespace), 0, body=_named("stuck")))
        pax.create("stuck", cpu_job(16))
        wait_for("16 hanging pod creations", lambda: proxy.held >= 16, 30)
        pax.create("fine", cpu_job(2))
        pax.wait_pods("fine", 2, 0, timeout=60)
        fine = proxy.answered("POST", _pod_posts(namespace), _named("fine"))
        assert fine and all(s.held >= 16 for s in fine), [s.held for s in fine]
    finally:
        proxy.release()
        _stop(operator)


LEASE = "pax-operator"  # the name deploy/rbac's Role allows


def test_the_leader_keeps_its_lease_across_an_apiserver_restart(
    control_plane: ControlPlane, pax_installed: Path, pax: Pax, namespace: str, tmp_path: Path
) -> None:
    """The apiserver is killed and started again while the leader runs: down for less than the renew
    deadline, the leader keeps the Lease (no transition, no exit: no restart of the operator's pod), and a
    PaxJob created once the apiserver is back gets its gang."""
    leases = f"{control_plane.server}/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases"
    admin = control_plane.admin_session()
    admin.delete(f"{leases}/{LEASE}", timeout=30)  # a killed operator's Lease from another test
    election = (
        "--leader-elect",
        f"--leader-election-namespace={OPERATOR_NAMESPACE}",
        f"--leader-election-id={LEASE}",
        "--lease-duration=40",  # longer than the restart takes on a loaded box
        "--renew-deadline=30",
        "--retry-period=1",
    )
    operator = _operator(pax_installed, namespace, tmp_path, election)
    try:
        pax.create("before", cpu_job(2))
        pax.wait_pods("before", 2, 0, timeout=60)
        held = admin.get(f"{leases}/{LEASE}", timeout=30).json()["spec"]
        downtime = restart_apiserver(control_plane, compact=False)
        back = time.monotonic()
        pax.create("after", cpu_job(2))
        pax.wait_pods("after", 2, 0, timeout=RECOVERY_TIMEOUT_S)
        recovered = time.monotonic() - back
        lease = admin.get(f"{leases}/{LEASE}", timeout=30).json()["spec"]
        assert lease["holderIdentity"] == held["holderIdentity"]
        assert lease.get("leaseTransitions", 0) == held.get("leaseTransitions", 0)
        assert lease["renewTime"] > held["renewTime"]  # renewed since
        assert operator.proc is not None and operator.proc.poll() is None
        print(f"apiserver down {downtime:.1f}s; a new PaxJob's pods {recovered:.1f}s after it was back")
    finally:
        _stop(operator)
        admin.delete(f"{leases}/{LEASE}", timeout=30)


def test_sigterm_stops_the_operator_promptly_while_the_apiserver_is_unreachable(
    proxy: FaultProxy, proxied_kubeconfig: Path, pax: Pax, namespace: str, tmp_path: Path
) -> None:
    """A rollout or a drain while the apiserver cannot be reached: the operator cleans up (bounded
    requests) and exits 0, rather than sit out Python's 300 s wait for an executor thread kopf parks on
    the stop flag (and be SIGKILLed at the end of the pod's grace period)."""
    operator = _operator(proxied_kubeconfig, namespace, tmp_path)
    try:
        pax.create("lm", cpu_job(2))
        pax.wait_pods("lm", 2, 0, timeout=60)
        proxy.cut()
        assert operator.proc is not None
        operator.proc.send_signal(signal.SIGTERM)
        try:
            code = operator.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, f"still running 60 s after SIGTERM (exit code {code})"
    finally:
        _stop(operator)


def test_watches_that_end_at_once_are_retried_with_backoff_not_in_a_busy_loop(
    proxy: FaultProxy, proxied_kubeconfig: Path, pax: Pax, namespace: str, tmp_path: Path
) -> None:
    """Something between the operator and the apiserver (a proxy, a gateway) ends every watch at once with
    nothing in it: client-go calls that a very short watch and backs off; the operator must not ask again
    and again as fast as it can."""
    operator = _operator(proxied_kubeconfig, namespace, tmp_path)
    try:
        pax.create("first", cpu_job(2))
        pax.wait_pods("first", 2, 0, timeout=60)  # the informers list and watch
        ending = proxy.add(Fault("GET", r"/paxjobs\?.*watch=", 200))
        proxy.cut()  # the watch open now ends too
        proxy.heal()
        wait_for("a watch ended at once", lambda: ending.hits > 0, 60)
        since = time.monotonic()
        time.sleep(5)
        ended = [s for s in proxy.answered("GET", r"/paxjobs\?.*watch=") if s.at >= since]
        proxy.faults.remove(ending)
        print(f"{len(ended)} watches in 5 s while every watch ended at once")
        assert len(ended) <= 10, f"{len(ended)} watches in 5 s"
        pax.create("lm", cpu_job(2))  # the informer recovers once watches last again
        pax.wait_pods("lm", 2, 0, timeout=RECOVERY_TIMEOUT_S)
    finally:
        _stop(operator)
