"""Where the operator runs: its credentials and its own namespace (in a pod, or beside a kubeconfig)."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes import config

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def load_config() -> None:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config (the default
    client configuration every API client copies)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def default_namespace() -> str | None:
    """The operator's own namespace: $POD_NAMESPACE, else the mounted ServiceAccount's, else None."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None
