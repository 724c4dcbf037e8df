"""Pure pieces of the process kubelet: env resolution, $(VAR) expansion, hosts file, IP allocation,
container status documents. No I/O here."""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity

_LABEL_PATH = re.compile(r"metadata\.(labels|annotations)\['([^']+)'\]")
TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


class PodSpecError(ValueError):
    """The pod asks for something this kubelet cannot provide (reported as a container error)."""


_NOT_PROVIDED = {
    "hostPID": "every container runs in a PID namespace of its own",
    "shareProcessNamespace": "every container runs in a PID namespace of its own",
}


def check_pod_spec(spec: Mapping[str, Any]) -> None:
    """`PodSpecError` for pod fields this kubelet would contradict (never silently ignored)."""
    asked = [f"spec.{name}: true ({why})" for name, why in _NOT_PROVIDED.items() if spec.get(name)]
    if asked:
        raise PodSpecError(f"not provided by the process kubelet: {'; '.join(asked)}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion (k8s.io/kubernetes/third_party/forked/golang/expansion): `$(NAME)`,
    NAME being anything up to the first `)`, becomes NAME's value, or stays as written when undefined;
    `$$` becomes `$`; any other `$` stays, with the character after it (which is not read again)."""
    out: list[str] = []
    start = 0
    while (dollar := text.find("$", start)) != -1 and dollar + 1 < len(text):
        out.append(text[start:dollar])
        after = text[dollar + 1]
        close = text.find(")", dollar + 2) if after == "(" else -1
        if close != -1:
            name = text[dollar + 2 : close]
            out.append(env.get(name, f"$({name})"))
            start = close + 1
        else:
            out.append("$" if after == "$" else "$" + after)
            start = dollar + 2
    return "".join(out) + text[start:]


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """Value of a downward-API fieldPath for this pod."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    match = _LABEL_PATH.fullmatch(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodSpecError(f"unsupported fieldRef {path!r}")


# (kind, name, key, optional) -> the key's value; key "" (envFrom): every key, as a JSON object
Lookup = Callable[[str, str, str, bool], str | None]

# What the process kubelet's Node reports as allocatable (a resourceFieldRef to an unset limit reads it).
NODE_ALLOCATABLE = {"cpu": str(os.cpu_count() or 2), "memory": "24Gi", "pods": "110"}
_RESOURCES = ("cpu", "memory", "ephemeral-storage")


def resource_field(pod: Mapping[str, Any], container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """A resourceFieldRef's value, as a kubelet computes it: the container's limit (its node's
    allocatable when unset) or request (its limit when unset, else 0), in `divisor` units rounded up."""
    kind, _, name = str(ref.get("resource", "")).partition(".")
    if kind not in ("limits", "requests") or name not in _RESOURCES:
        raise PodSpecError(f"unsupported resourceFieldRef resource {ref.get('resource')!r}")
    if ref.get("containerName"):
        named = [c for c in pod.get("spec", {}).get("containers") or [] if c["name"] == ref["containerName"]]
        if not named:
            raise PodSpecError(f"resourceFieldRef: no container {ref['containerName']!r}")
        container = named[0]
    resources = container.get("resources") or {}
    limit = (resources.get("limits") or {}).get(name)
    value = (resources.get("requests") or {}).get(name, limit) if kind == "requests" else limit
    if value is None:
        value = NODE_ALLOCATABLE.get(name, "0") if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    if divisor <= 0:
        raise PodSpecError(f"resourceFieldRef {kind}.{name}: divisor must be positive")
    return str(math.ceil(parse_quantity(value) / divisor))


def resolve_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookup: Lookup,
) -> dict[str, str]:
    """The container's own environment: envFrom, then env in order. As in a kubelet, a value's $(VAR)
    sees only what is defined before it, never the image's ENV (PATH, HOME...): the caller overlays this
    on the image's env and expands command and args against this alone."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("configMapRef", "secretRef"):
            ref = source.get(kind)
            if ref:
                values = json.loads(lookup(kind, ref["name"], "", bool(ref.get("optional"))) or "{}")
                env.update({prefix + key: str(value) for key, value in values.items()})
    for var in container.get("env") or []:
        name = var["name"]
        source = var.get("valueFrom")
        if not source:  # the apiserver drops `value: ""`: a bare name is an empty variable
            env[name] = expand(var.get("value") or "", env)
        elif "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_field(pod, container, source["resourceFieldRef"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMapKeyRef" if "configMapKeyRef" in source else "secretKeyRef"
            ref = source[kind]
            value = lookup(kind, ref["name"], ref["key"], bool(ref.get("optional")))
            if value is not None:
                env[name] = value
        else:
            raise PodSpecError(
                f"env {name}: valueFrom {sorted(source)} is not provided by the process kubelet"
            )
    return env


def dns_names(hostname: str, subdomain: str | None, namespace: str) -> list[str]:
    """Names a pod answers to: its hostname and, with a subdomain, the headless-service forms."""
    names = [hostname]
    if subdomain:
        base = f"{hostname}.{subdomain}"
        names += [
            base,
            f"{base}.{namespace}",
            f"{base}.{namespace}.svc",
            f"{base}.{namespace}.svc.cluster.local",
        ]
    return names


def render_hosts(entries: Iterable[tuple[str, list[str]]]) -> str:
    """/etc/hosts text: localhost plus one line per (ip, names), sorted for stable output."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in sorted(entries)]
    return "\n".join(lines) + "\n"


class IpAllocator:
    """Unique loopback addresses for pods, from 127.10.0.0/16; an address is never reused while held."""

    def __init__(self, network: str = "127.10.0.0/16") -> None:
        self._hosts = ipaddress.ip_network(network).hosts()
        self._free: list[str] = []
        self._held: set[str] = set()

    def allocate(self) -> str:
        ip = self._free.pop(0) if self._free else str(next(self._hosts))
        self._held.add(ip)
        return ip

    def release(self, ip: str) -> None:
        if ip in self._held:
            self._held.discard(ip)
            self._free.append(ip)


@dataclass
class Exit:
    """How a container process ended."""

    code: int
    started_at: str
    finished_at: str
    message: str = ""


def exit_code_of(returncode: int) -> int:
    """Popen returncode → container exit code (signals become 128+N, as in a shell)."""
    return 128 - returncode if returncode < 0 else returncode


def termination_message(written: str, log_tail: str, exit_code: int, policy: str = "File") -> str:
    """The message a kubelet reports: the file's content, or the log tail (FallbackToLogsOnError)."""
    message = written
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message.encode()[:TERMINATION_MESSAGE_LIMIT].decode(errors="ignore")


def terminated_state(outcome: Exit) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": outcome.code,
        "reason": "Completed" if outcome.code == 0 else "Error",
        "startedAt": outcome.started_at,
        "finishedAt": outcome.finished_at,
    }
    if outcome.message:
        state["message"] = outcome.message
    return state


def container_status(
    container: Mapping[str, Any],
    *,
    state: dict[str, Any],
    ready: bool,
    restart_count: int = 0,
    pid: int | None = None,
    last_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of containerStatuses / initContainerStatuses."""
    status: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "restartCount": restart_count,
        "started": "running" in state,
        "state": state,
    }
    if pid is not None:
        status["containerID"] = f"process://{pid}"
    if last_state is not None:
        status["lastState"] = {"terminated": last_state}
    return status


def reported_status(
    phase: str,
    container: Mapping[str, Any],
    ip: str,
    at: str,
    *,
    exit_code: int | None = None,
    message: str = "",
) -> dict[str, Any]:
    """The status a kubelet reports for a one-container pod, running (exit_code None) or exited: for the
    tiers where nothing runs the pod (the operator benchmark, the operator's integration tests)."""
    if exit_code is None:
        state: dict[str, Any] = {"running": {"startedAt": at}}
    else:
        state = {"terminated": terminated_state(Exit(exit_code, at, at, message))}
    return {
        "phase": phase,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "startTime": at,
        "containerStatuses": [container_status(container, state=state, ready=exit_code is None)],
    }


RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0


def restart_delay(restart_count: int) -> float:
    """Seconds before restarting a container that exited `restart_count` times before (doubling, capped;
    a kubelet starts at 10 s and caps at 5 min; shorter here so tests stay fast)."""
    return min(RESTART_BACKOFF_S * 2 ** min(restart_count, 10), RESTART_BACKOFF_MAX_S)


def pod_phase(restart_policy: str, exits: Mapping[str, int], expected: int) -> str | None:
    """Terminal phase once every main container exited, else None."""
    if len(exits) < expected:
        return None
    if all(code == 0 for code in exits.values()):
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else None
