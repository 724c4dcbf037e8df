"""Pure pieces of the process kubelet: $(VAR) expansion, env resolution, hosts file, IPs, statuses."""

from __future__ import annotations

from typing import Any

import pytest
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

POD: dict[str, Any] = {
    "metadata": {
        "name": "job-0",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "pax"},
        "annotations": {"a.b/c": "note"},
    },
    "spec": {"nodeName": "pax-local", "serviceAccountName": "trainer"},
    "status": {"podIP": "127.10.0.1", "hostIP": "127.0.0.1"},
}


def no_lookup(kind: str, name: str, key: str, optional: bool) -> str | None:
    raise AssertionError(f"unexpected lookup {kind} {name} {key}")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$1"),
        ("$(MISSING)", "$(MISSING)"),
        ("$A $(A", "$A $(A"),
        ("", ""),
    ],
)
def test_expand(text: str, want: str) -> None:
    assert expand(text, {"A": "1", "B": "two"}) == want


def test_field_refs_and_order() -> None:
    container = {
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['a.b/c']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
            {"name": "ADDR", "value": "$(NAME).$(NS):$(PORT)"},
            {"name": "PORT", "value": "8476"},
            {"name": "LATE", "value": "$(PORT)"},
        ]
    }
    env = resolve_env(POD, container, no_lookup)
    assert env == {
        "NAME": "job-0",
        "NS": "ns",
        "UID": "u-1",
        "APP": "pax",
        "NOTE": "note",
        "IP": "127.10.0.1",
        "NODE": "pax-local",
        "SA": "trainer",
        "ADDR": "job-0.ns:$(PORT)",  # only earlier vars expand, as in Kubernetes
        "PORT": "8476",
        "LATE": "8476",
    }


def test_unsupported_field_ref() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}}]}
    with pytest.raises(PodSpecError):
        resolve_env(POD, container, no_lookup)


def test_config_map_and_secret_refs() -> None:
    calls: list[tuple[str, str, str, bool]] = []

    def lookup(kind: str, name: str, key: str, optional: bool) -> str | None:
        calls.append((kind, name, key, optional))
        if kind == "configMapRef":
            return '{"A": "1", "B": "x=y"}'
        return {"k": "v"}.get(key)

    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "P_"}],
        "env": [
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "O", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "nope", "optional": True}}},
        ],
    }
    env = resolve_env(POD, container, lookup)
    assert env == {"P_A": "1", "P_B": "x=y", "S": "v"}
    assert ("configMapKeyRef", "c", "nope", True) in calls


def test_dns_names_and_hosts_file() -> None:
    names = dns_names("job-0", "job", "ns")
    assert names == [
        "job-0",
        "job-0.job",
        "job-0.job.ns",
        "job-0.job.ns.svc",
        "job-0.job.ns.svc.cluster.local",
    ]
    assert dns_names("solo", None, "ns") == ["solo"]
    text = render_hosts([("127.10.0.2", ["b"]), ("127.10.0.1", names)])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-2] == "127.10.0.1\t" + " ".join(names)
    assert lines[-1] == "127.10.0.2\tb"
    assert text.endswith("\n")


def test_ip_allocator_never_reuses_held() -> None:
    ips = IpAllocator()
    got = [ips.allocate() for _ in range(300)]
    assert len(set(got)) == 300
    assert all(ip.startswith("127.10.") for ip in got)
    assert got[0] == "127.10.0.1"
    ips.release(got[5])
    ips.release("127.99.0.1")  # unknown: ignored
    assert ips.allocate() == got[5]
    assert ips.allocate() not in got


def test_exit_codes() -> None:
    assert exit_code_of(0) == 0
    assert exit_code_of(3) == 3
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143


def test_termination_message_policies() -> None:
    log = "\n".join(f"line {i}" for i in range(200))
    assert termination_message("result", log, 1, "FallbackToLogsOnError") == "result"
    assert termination_message("", log, 0, "FallbackToLogsOnError") == ""
    assert termination_message("", log, 1, "File") == ""
    fallback = termination_message("", log, 1, "FallbackToLogsOnError")
    assert fallback.endswith("line 199") and "line 100" not in fallback
    assert len(fallback.encode()) <= 2048
    assert len(termination_message("x" * 10000, "", 0).encode()) == 4096


def test_terminated_state_and_container_status() -> None:
    ok = terminated_state(Exit(0, "t0", "t1", "done"))
    assert ok == {
        "exitCode": 0,
        "reason": "Completed",
        "startedAt": "t0",
        "finishedAt": "t1",
        "message": "done",
    }
    bad = terminated_state(Exit(2, "t0", "t1"))
    assert bad["reason"] == "Error" and "message" not in bad
    running = container_status({"name": "c"}, state={"running": {"startedAt": "t0"}}, ready=True, pid=42)
    assert running["started"] and running["ready"] and running["containerID"] == "process://42"
    done = container_status({"name": "c"}, state={"terminated": ok}, ready=False, restart_count=2)
    assert not done["started"] and done["restartCount"] == 2 and "containerID" not in done


@pytest.mark.parametrize(
    ("policy", "exits", "want"),
    [
        ("Never", {"a": 0, "b": 0}, "Succeeded"),
        ("Never", {"a": 0, "b": 1}, "Failed"),
        ("Never", {"a": 0}, None),
        ("OnFailure", {"a": 1, "b": 0}, None),
        ("Always", {"a": 0, "b": 0}, "Succeeded"),
    ],
)
def test_pod_phase(policy: str, exits: dict[str, int], want: str | None) -> None:
    assert pod_phase(policy, exits, 2) == want


def test_restart_delay_doubles_and_caps() -> None:
    assert [restart_delay(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert restart_delay(50) == 30.0


def test_last_state_is_reported() -> None:
    ok = terminated_state(Exit(1, "t0", "t1"))
    status = container_status({"name": "c"}, state={"running": {}}, ready=True, last_state=ok)
    assert status["lastState"] == {"terminated": ok}


def test_pod_fields_the_kubelet_would_contradict_are_refused_by_name() -> None:
    from pax_cluster.podenv import check_pod_spec

    check_pod_spec({"containers": [], "hostPID": False, "hostNetwork": True})
    with pytest.raises(PodSpecError, match=r"spec\.hostPID: true .*; spec\.shareProcessNamespace: true"):
        check_pod_spec({"hostPID": True, "shareProcessNamespace": True})


def test_resource_field_refs_read_the_containers_resources_as_a_kubelet_does() -> None:
    """They were all "0": a container sizing its threads or memory from limits.cpu got 0."""
    from pax_cluster.podenv import NODE_ALLOCATABLE

    def ref(resource: str, **extra: str) -> dict[str, Any]:
        return {"name": resource.upper(), "valueFrom": {"resourceFieldRef": {"resource": resource, **extra}}}

    container = {
        "name": "main",
        "resources": {"limits": {"cpu": "1500m", "memory": "2Gi"}, "requests": {"cpu": "250m"}},
        "env": [
            ref("limits.cpu"),
            ref("requests.cpu", divisor="1m"),
            ref("limits.memory", divisor="1Mi"),
            ref("requests.memory"),  # unset: its limit
            ref("limits.ephemeral-storage"),  # no limit, none allocatable: 0
        ],
    }
    env = resolve_env(POD, container, no_lookup)
    assert env["LIMITS.CPU"] == "2" and env["REQUESTS.CPU"] == "250" and env["LIMITS.MEMORY"] == "2048"
    assert env["REQUESTS.MEMORY"] == str(2 * 1024**3) and env["LIMITS.EPHEMERAL-STORAGE"] == "0"
    bare = {"name": "main", "env": [ref("limits.cpu"), ref("requests.cpu")]}
    assert resolve_env(POD, bare, no_lookup) == {"LIMITS.CPU": NODE_ALLOCATABLE["cpu"], "REQUESTS.CPU": "0"}
    with pytest.raises(PodSpecError, match="hugepages"):
        resolve_env(POD, {"name": "main", "env": [ref("limits.hugepages-2Mi")]}, no_lookup)


def test_an_env_source_it_does_not_provide_is_refused_by_name() -> None:
    """It was set to "" silently (fileKeyRef, say, or a valueFrom with no source)."""
    source = {"fileKeyRef": {"path": "cfg.env", "key": "K", "volumeName": "v"}}
    with pytest.raises(PodSpecError, match=r"env K: valueFrom \['fileKeyRef'\] is not provided"):
        resolve_env(POD, {"name": "main", "env": [{"name": "K", "valueFrom": source}]}, no_lookup)
