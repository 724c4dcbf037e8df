"""Kubernetes API helpers the tests share."""

from __future__ import annotations

from collections.abc import Callable

from kubernetes.client.exceptions import ApiException


def unless_missing[T](read: Callable[[], T]) -> T | None:
    """`read()`, or None when the object does not exist (404); any other refusal is raised."""
    try:
        return read()
    except ApiException as err:
        if err.status == 404:
            return None
        raise
