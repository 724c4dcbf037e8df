"""Where the operator runs: its credentials and its own namespace (in a pod, or beside a kubeconfig)."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Self

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def load_config() -> None:
    """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config (the default
    client configuration every API client copies)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


# What a request of the generated clients raises when it fails: an answer, or none (urllib3's errors, e.g.
# MaxRetryError for a refused connection, are not OSErrors).
REQUEST_ERRORS = (ApiException, OSError, urllib3.exceptions.HTTPError)


class RetryUnlessTimedOut(urllib3.Retry):
    """urllib3's retries (three) of a connection refused or dropped before any answer, but none of a read
    timeout: a retried hung request held its caller four times its timeout. A dropped pooled connection (the
    apiserver restarted or closed it idle) still costs a retry, not a failed reconcile."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise urllib3.exceptions.MaxRetryError(_pool, url or "", error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def api_client() -> client.ApiClient:
    """A client of its own (so its requests never queue behind the reconcilers'), without urllib3's three
    retries: its caller's loop retries, and a retried hung request held it four times its timeout."""
    load_config()
    configuration = client.Configuration.get_default_copy()
    configuration.retries = False
    return client.ApiClient(configuration)


def default_namespace() -> str | None:
    """The operator's own namespace: $POD_NAMESPACE, else the mounted ServiceAccount's, else None."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None
