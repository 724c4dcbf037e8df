"""Must-show 2-5 against a real apiserver: the operator (a subprocess under deploy/'s RBAC) reacts
to pod outcomes that the tests report the way a kubelet would."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from pax_contract import TrainerResult
from paxjob_harness import OperatorProcess, Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration


def _running(pax: Pax, job: str, hosts: int, attempt: int) -> list[dict]:
    pods = pax.wait_pods(job, hosts, attempt)
    pax.run_all(job)
    pax.wait_status(job, f"Running at attempt {attempt}", lambda s: s.get("phase") == "Running")
    return pods


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def test_valid_job_renders_runs_succeeds_and_expires(
    restricted_namespace, operator_factory, core, custom, kubectl
):
    """Service + pods with the contract's env/labels/owners, admitted under PSA restricted; success; TTL."""
    ns = restricted_namespace
    pax = Pax(core, custom, ns)
    spec = cpu_job(
        2,
        tensorboard={"enabled": True},
        overrides={"num_train_steps": "20"},
        checkpointIntervalSteps=10,
        ttlSecondsAfterFinished=8,
    )
    job = pax.create("lm", spec)
    operator_factory(ns)
    pods = pax.wait_pods("lm", 2, 0)

    service = core.read_namespaced_service("lm", ns)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    for host, pod in enumerate(pods):
        meta, pod_spec = pod["metadata"], pod["spec"]
        assert (
            meta["name"] == f"lm-{host}"
            and pod_spec["hostname"] == f"lm-{host}"
            and pod_spec["subdomain"] == "lm"
        )
        assert (
            meta["labels"]["pax.dev/host-index"] == str(host)
            and meta["labels"]["pax.dev/restart-attempt"] == "0"
        )
        (owner,) = meta["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("PaxJob", job["metadata"]["uid"], True)
        trainer = pod_spec["containers"][0]
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        assert env["JAX_COORDINATOR_ADDRESS"] == f"lm-0.lm.{ns}.svc:8476"
        assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["PAX_RESTART_ATTEMPT"]) == (
            "2",
            str(host),
            "0",
        )
        assert env["PAX_RESULT_FILE"] == trainer["terminationMessagePath"] == "/dev/termination-log"
        assert "--set=save_interval_steps=10" in trainer["command"]
        assert pod_spec["restartPolicy"] == "Never"
    assert [c["name"] for c in pods[0]["spec"]["initContainers"]] == ["tensorboard"]
    status = pax.wait_status(
        "lm", "Pending with 2 hosts", lambda s: s.get("phase") == "Pending" and s.get("hosts") == 2
    )
    assert _condition(status, "Created")["status"] == "True"

    pax.run_all("lm")
    pax.wait_status("lm", "Running", lambda s: s.get("phase") == "Running")
    metadata = (pax.get("lm") or {})["metadata"]
    assert not metadata.get("finalizers") and not metadata.get("annotations")  # deletable without us
    assert pax.status("lm")["observedGeneration"] == metadata["generation"]
    table = kubectl("get", "pj", "-n", ns, check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "HOSTS", "STEP", "RESTARTS", "REASON", "AGE"]
    assert table[1].split()[:3] == ["lm", "Running", "2"] and "AllHostsRunning" in table[1].split()

    result = TrainerResult(
        exit_reason="completed",
        final_step=20,
        last_checkpoint_step=20,
        metrics={"eval_test/loss": 1.25, "train/loss": float("nan")},  # NaN: not a JSON number
        message="trained 20 steps",
    )
    pax.kubelet("lm-1", "Succeeded", exit_code=0)
    pax.kubelet("lm-0", "Succeeded", exit_code=0, message=result.to_json())
    status = pax.wait_status("lm", "Succeeded", lambda s: s.get("phase") == "Succeeded", timeout=20)
    assert status["progress"]["step"] == 20 and status["progress"]["lastCheckpointStep"] == 20
    assert status["progress"]["metrics"] == {"eval_test/loss": 1.25} and status["completionTime"]
    assert status["progress"]["nonFiniteMetrics"] == {"train/loss": "NaN"}
    pax.wait_events("lm", "GangCreated", "Completed")
    describe = kubectl("describe", "pj", "lm", "-n", ns, check=True).stdout
    for text in ("Phase:", "Succeeded", "GangCreated", "Completed", "trained 20 steps"):
        assert text in describe, describe

    wait_for("TTL to delete the PaxJob", lambda: pax.get("lm") is None, timeout=30)
    wait_for("garbage collection of the pods", lambda: pax.pods("lm") == [], timeout=30)


def test_preemptions_restart_the_whole_gang(operator, pax):
    pax.create("pre", cpu_job(3, checkpointIntervalSteps=5))
    first = _running(pax, "pre", 3, 0)

    pax.kubelet("pre-1", "Failed", exit_code=143)  # SIGTERM from outside
    status = pax.wait_status("pre", "a preemption", lambda s: s.get("preemptions") == 1)
    assert (status["restartAttempt"], status["restarts"], status.get("failures", 0)) == (1, 1, 0)
    assert status["lastRestart"]["reason"] == "Terminated"
    second = _running(pax, "pre", 3, 1)
    assert {p["metadata"]["uid"] for p in first}.isdisjoint(p["metadata"]["uid"] for p in second)
    status = pax.status("pre")
    assert (
        _condition(status, "Restarting")["status"] == "False"
        and _condition(status, "Running")["status"] == "True"
    )

    disruption = [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    pax.kubelet("pre-2", "Running", conditions=disruption)
    pax.wait_status(
        "pre", "second preemption", lambda s: s.get("preemptions") == 2 and s["restartAttempt"] == 2
    )
    _running(pax, "pre", 3, 2)

    pax.core.delete_namespaced_pod("pre-0", pax.namespace)  # someone else deletes a pod
    status = pax.wait_status("pre", "third preemption", lambda s: s.get("preemptions") == 3)
    assert status.get("failures", 0) == 0 and status["lastRestart"]["reason"] == "PodDeleted"
    _running(pax, "pre", 3, 3)
    pax.wait_events("pre", "Terminated", "PreemptionByScheduler", "PodDeleted")


def test_failures_beyond_the_budget_fail_the_job(operator, pax):
    pax.create("flaky", cpu_job(2, restartPolicy={"maxFailures": 1, "backoffSeconds": 1}))
    _running(pax, "flaky", 2, 0)
    pax.kubelet("flaky-1", "Failed", exit_code=1)
    pax.wait_status("flaky", "first failure", lambda s: s.get("failures") == 1 and s["restartAttempt"] == 1)
    _running(pax, "flaky", 2, 1)
    pax.kubelet("flaky-0", "Failed", exit_code=3)  # storage error: a failure too
    status = pax.wait_status("flaky", "Failed", lambda s: s.get("phase") == "Failed")
    failed = _condition(status, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "FailureLimitExceeded"
    assert (status["failures"], status["restarts"]) == (2, 1)
    wait_for(
        "running host stopped",
        lambda: [p["metadata"]["name"] for p in pax.pods("flaky")] == ["flaky-0"],
        timeout=30,
    )
    time.sleep(3)  # terminal: nothing comes back
    assert [p["metadata"]["labels"]["pax.dev/restart-attempt"] for p in pax.pods("flaky")] == ["1"]
    assert pax.status("flaky")["phase"] == "Failed"


def test_config_error_fails_at_once(operator, pax, kubectl):
    pax.create("typo", cpu_job(2))
    _running(pax, "typo", 2, 0)
    result = TrainerResult(exit_reason="config_error", message="unknown override 'learning_rat'")
    pax.kubelet("typo-0", "Failed", exit_code=2, message=result.to_json())
    status = pax.wait_status("typo", "Failed", lambda s: s.get("phase") == "Failed")
    assert _condition(status, "Failed")["reason"] == "ConfigError"
    assert (
        status.get("restarts", 0) == 0 and status["progress"]["message"] == "unknown override 'learning_rat'"
    )
    wide = kubectl("get", "pj", "typo", "-n", pax.namespace, "-o", "wide", check=True).stdout
    assert "ConfigError" in wide and "trainer exited 2: unknown override 'learning_rat'" in wide, wide


def test_suspend_deletes_pods_keeps_status_and_resume_recreates(operator, pax):
    pax.create("nap", cpu_job(2))
    _running(pax, "nap", 2, 0)
    pax.kubelet("nap-1", "Failed", exit_code=42)
    _running(pax, "nap", 2, 1)
    pax.patch_spec("nap", {"suspend": True})
    status = pax.wait_status("nap", "Suspended", lambda s: s.get("phase") == "Suspended")
    wait_for("pods deleted", lambda: pax.pods("nap") == [], timeout=30)
    assert status["preemptions"] == 1 and _condition(status, "Suspended")["status"] == "True"
    time.sleep(2)
    assert pax.pods("nap") == [] and pax.status("nap")["phase"] == "Suspended"

    pax.patch_spec("nap", {"suspend": False})
    _running(pax, "nap", 2, 2)
    status = pax.status("nap")
    assert _condition(status, "Suspended")["status"] == "False" and status["preemptions"] == 1
    pax.wait_events("nap", "Suspended", "Resumed")


def test_an_edit_made_while_suspended_reaches_the_gang_when_the_operator_missed_the_suspension(
    operator_factory, pax, namespace
):
    """suspend, a new image, resume, all while the operator is down: the running gang was kept (old image)."""
    pax.create("edit", cpu_job(2))
    first: OperatorProcess = operator_factory(namespace)
    _running(pax, "edit", 2, 0)
    first.kill()
    pax.patch_spec("edit", {"suspend": True})
    pax.patch_spec("edit", {"suspend": False, "image": "pax/trainer:edited"})
    operator_factory(namespace)
    pods = pax.wait_pods("edit", 2, 1)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"pax/trainer:edited"}
    status = pax.wait_status("edit", "gang 1 created", lambda s: s.get("gangCreated") is True)
    assert (status["restarts"], status["failures"], status["preemptions"]) == (0, 0, 0)
    pax.wait_events("edit", "SpecChanged")


def test_operator_killed_mid_reconcile_converges_without_duplicates(operator_factory, pax, namespace):
    hosts = 40
    pax.create("big", cpu_job(hosts, restartPolicy={"backoffSeconds": 3}))
    first: OperatorProcess = operator_factory(namespace)
    wait_for("the first pods", lambda: len(pax.pods("big")) > 0, timeout=30, interval=0.02)
    first.kill()
    created_before_kill = len(pax.pods("big"))
    print(f"operator SIGKILLed with {created_before_kill}/{hosts} pods created")

    second = operator_factory(namespace)
    pods = pax.wait_pods("big", hosts, 0)
    assert sorted(int(p["metadata"]["labels"]["pax.dev/host-index"]) for p in pods) == list(range(hosts))
    pax.wait_status("big", "gang created", lambda s: s.get("gangCreated") is True)
    pax.run_all("big")
    pax.wait_status("big", "Running", lambda s: s.get("phase") == "Running")

    pax.kubelet("big-7", "Failed", exit_code=137)
    pax.wait_status("big", "Restarting", lambda s: s.get("phase") == "Restarting", timeout=20)
    second.kill()  # between counting the preemption and recreating the gang
    operator_factory(namespace)
    pods = pax.wait_pods("big", hosts, 1, timeout=60)
    assert len({p["metadata"]["name"] for p in pods}) == hosts
    status = pax.wait_status("big", "gang 1 created", lambda s: s.get("gangCreated") is True)
    assert (status["preemptions"], status["restarts"], status["restartAttempt"]) == (1, 1, 1)
    assert json.dumps(status).count("FailureLimitExceeded") == 0


def test_operator_rbac_is_least_privilege(kubectl, pax_installed):
    operator = "system:serviceaccount:pax-system:pax-operator"
    allowed = [
        ("create", "pods"),
        ("delete", "pods"),
        ("watch", "pods"),
        ("update", "paxjobs.pax.dev", "--subresource=status"),
        ("delete", "paxjobs.pax.dev"),
        ("create", "events"),
        ("create", "services"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "paxjobs.pax.dev"),  # PaxSweep's trials
    ]
    denied = [
        ("get", "secrets"),
        ("list", "secrets"),
        ("update", "paxjobs.pax.dev"),
        ("delete", "nodes"),
        ("create", "pods", "--subresource=exec"),
        ("*", "*"),
        ("list", "configmaps"),
        ("delete", "networkpolicies.networking.k8s.io"),  # created once, removed by the garbage collector
    ]
    for question in allowed + denied:
        answer = kubectl("auth", "can-i", *question, "-A", f"--as={operator}").stdout.strip()
        assert answer == ("yes" if question in allowed else "no"), (question, answer)


def test_gpu_and_tpu_multislice_gangs_are_admitted_under_psa_restricted(
    restricted_namespace, operator_factory, core, custom
):
    pax = Pax(core, custom, restricted_namespace)
    pax.create("gpu", cpu_job(topology={"gpu": {"hosts": 2, "gpusPerHost": 8}}))
    tpu = {"tpu": {"acceleratorType": "v5p", "topology": "2x2x4", "slices": 2}}
    pax.create("tpu", cpu_job(topology=tpu, tensorboard={"enabled": True}))
    operator_factory(restricted_namespace)

    for pod in pax.wait_pods("gpu", 2, 0):
        assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    pods = pax.wait_pods("tpu", 8, 0)
    for pod in pods:
        host = int(pod["metadata"]["labels"]["pax.dev/host-index"])
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("8", str(host))
        assert (env["MEGASCALE_NUM_SLICES"], env["MEGASCALE_SLICE_ID"]) == ("2", str(host // 4))
        assert pod["metadata"]["labels"]["pax.dev/slice"] == str(host // 4)
        assert pod["spec"]["nodeSelector"] == {
            "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
            "cloud.google.com/gke-tpu-topology": "2x2x4",
        }
        assert pod["spec"]["containers"][0]["resources"]["limits"]["google.com/tpu"] == "4"
    assert pax.wait_status("tpu", "8 hosts", lambda s: s.get("hosts") == 8)


def test_pods_refused_by_admission_are_reported_on_the_paxjob(
    restricted_namespace, operator_factory, core, custom
):
    pax = Pax(core, custom, restricted_namespace)
    host_path = {"volumes": [{"name": "data", "hostPath": {"path": "/data"}}]}
    pax.create("nope", cpu_job(podTemplate=host_path))
    operator_factory(restricted_namespace)
    pax.wait_events("nope", "FailedCreatePod")
    events = pax.core.list_namespaced_event(pax.namespace, field_selector="involvedObject.name=nope").items
    (refusal, *_) = [e for e in events if e.reason == "FailedCreatePod"]
    assert "restricted" in refusal.message and "hostPath" in refusal.message, refusal.message
    status = pax.wait_status(
        "nope", "Created=False", lambda s: _condition(s, "Created").get("status") == "False"
    )
    assert status["phase"] == "Pending" and _condition(status, "Created")["reason"] == "FailedCreatePod"
    assert pax.pods("nope") == []


def test_deleting_a_paxjob_cascades_to_its_gang(operator, pax):
    pax.create("gone", cpu_job(3))
    _running(pax, "gone", 3, 0)
    pax.custom.delete_namespaced_custom_object("pax.dev", "v1alpha1", pax.namespace, "paxjobs", "gone")
    wait_for("the garbage collector to delete the pods", lambda: pax.pods("gone") == [], timeout=60)
    wait_for(
        "the Service to go", lambda: not pax.core.list_namespaced_service(pax.namespace).items, timeout=60
    )


def test_two_operators_at_once_neither_duplicate_nor_double_count(operator_factory, pax, namespace):
    """Conflicts: status writes carry the resourceVersion read, pod names are per host."""
    operator_factory(namespace)
    operator_factory(namespace)
    pax.create("twin", cpu_job(6))
    _running(pax, "twin", 6, 0)
    for round_, exit_code in enumerate((143, 1, 42), start=1):
        pax.kubelet("twin-2", "Failed", exit_code=exit_code)
        pax.wait_status("twin", f"restart {round_}", lambda s, r=round_: s.get("restarts") == r)
        pods = _running(pax, "twin", 6, round_)
        assert len({p["metadata"]["name"] for p in pods}) == 6
    time.sleep(2)
    status = pax.status("twin")
    assert (status["restarts"], status["preemptions"], status["failures"], status["restartAttempt"]) == (
        3,
        2,
        1,
        3,
    )
    assert len(pax.pods("twin")) == 6


def test_active_deadline_fails_the_job_and_stops_its_pods(operator, pax):
    pax.create("slow", cpu_job(2, activeDeadlineSeconds=3))
    _running(pax, "slow", 2, 0)
    status = pax.wait_status("slow", "DeadlineExceeded", lambda s: s.get("phase") == "Failed", timeout=20)
    assert _condition(status, "Failed")["reason"] == "DeadlineExceeded"
    wait_for("pods stopped", lambda: pax.pods("slow") == [], timeout=30)


def test_a_foreign_pod_holding_a_gang_name_is_waited_for_never_a_preemption(operator, pax):
    """A pod named `<job>-1` that this PaxJob does not control (here: nobody's, not even labelled)."""
    foreign = {
        "metadata": {"name": "own-1"},
        "spec": {"containers": [{"name": "x", "image": "pax/other:1"}]},
    }
    pax.core.create_namespaced_pod(pax.namespace, foreign)
    pax.create("own", cpu_job(2))
    status = pax.wait_status(
        "own",
        "Created=False (PodNameTaken)",
        lambda s: _condition(s, "Created").get("reason") == "PodNameTaken",
    )
    assert "own-1" in _condition(status, "Created")["message"] and status.get("gangCreated") is not True
    pax.wait_events("own", "PodNameTaken", timeout=10)

    def retry_reported() -> Any:
        events = pax.core.list_namespaced_event(pax.namespace, field_selector="involvedObject.name=own").items
        (taken,) = [e for e in events if e.reason == "PodNameTaken"]  # retries aggregated into one Event
        return taken if taken.count >= 2 else None

    wait_for("a retry counted on the PodNameTaken Event", retry_reported, timeout=30)  # retried, reported,
    status = pax.status("own")  # never counted
    assert (status.get("preemptions", 0), status.get("restarts", 0)) == (0, 0)
    pax.core.delete_namespaced_pod("own-1", pax.namespace, grace_period_seconds=0)
    _running(pax, "own", 2, 0)
    status = pax.status("own")
    assert (status.get("preemptions", 0), status.get("restarts", 0)) == (0, 0)
    events = pax.core.list_namespaced_event(pax.namespace, field_selector="involvedObject.name=own").items
    (taken,) = [e for e in events if e.reason == "PodNameTaken"]  # retries aggregated into one Event
    assert taken.count >= 2, taken


def test_a_gang_that_cannot_start_is_reported_then_failed_at_the_startup_deadline(
    pax_installed, pax, namespace, tmp_path, kubectl
):
    operator = OperatorProcess(
        pax_installed, namespace, tmp_path / "op.log", ["--startup-deadline=4"]
    ).start()
    try:
        pax.create("badimg", cpu_job(2))
        pax.wait_pods("badimg", 2, 0)
        pax.kubelet("badimg-0", "Running")
        waiting = {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}}
        pod = pax.core.read_namespaced_pod_status("badimg-1", pax.namespace)
        status = {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": "nope:1",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": waiting,
                }
            ],
        }
        assert pod.status.phase == "Pending"
        pax.core.patch_namespaced_pod_status("badimg-1", pax.namespace, {"status": status})
        blocked = pax.wait_status(
            "badimg", "StartupBlocked", lambda s: _condition(s, "StartupBlocked").get("status") == "True"
        )
        assert _condition(blocked, "StartupBlocked")["reason"] == "ImagePullBackOff"
        assert "badimg-1" in _condition(blocked, "StartupBlocked")["message"]
        row = kubectl("get", "pj", "badimg", "-n", namespace, "--no-headers", check=True).stdout.split()
        assert row[:2] == ["badimg", "Pending"] and "ImagePullBackOff" in row, row  # the Reason column
        pax.wait_events("badimg", "ImagePullBackOff", timeout=10)
        failed = pax.wait_status("badimg", "Failed", lambda s: s.get("phase") == "Failed", timeout=20)
        assert _condition(failed, "Failed")["reason"] == "ImagePullBackOff"
        assert "start-up deadline" in _condition(failed, "Failed")["message"]
        assert (failed.get("failures", 0), failed.get("restarts", 0)) == (0, 0)
        wait_for("pods stopped", lambda: pax.pods("badimg") == [], timeout=30)
    finally:
        operator.kill()
