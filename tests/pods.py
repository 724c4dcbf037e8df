"""Pod manifests for the tests that run pods on the process kubelet (it runs each container's command as a
process; the image is never pulled)."""

from __future__ import annotations

from typing import Any


def pod(
    name: str, *containers: dict[str, Any], labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    """Pod `name` running `containers`; `spec` adds fields (restartPolicy Never unless it says otherwise)."""
    spec.setdefault("restartPolicy", "Never")
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"containers": list(containers), **spec},
    }


def container(name: str, *command: str, **extra: Any) -> dict[str, Any]:
    """A container that runs `command`; `extra` adds fields (volumeMounts, env, ...)."""
    return {"name": name, "image": "none", "command": list(command), **extra}


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container that runs a bash script."""
    return container(name, "bash", "-c", script, **extra)
