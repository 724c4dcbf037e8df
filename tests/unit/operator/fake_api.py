"""A fake API transport for `kube.Clients`: records each request as "VERB plural[/subresource]" (a GET of a
collection is "LIST plural"), answers like the apiserver would (the body back, with a new resourceVersion,
uid and name), and fails or answers on demand."""

from __future__ import annotations

from typing import Any

from kubernetes.client.exceptions import ApiException
from pax_operator.adapters import kube


def label(verb: str, path: str) -> str:
    """'POST /api/v1/namespaces/ns/pods' → 'POST pods'; '.../paxjobs/lm/status' → 'PUT paxjobs/status'."""
    parts = path.split("?")[0].strip("/").split("/")
    plural, rest = parts[parts.index("namespaces") + 2], parts[parts.index("namespaces") + 3 :]
    if verb == "GET" and not rest:
        return f"LIST {plural}"
    return f"{verb} {plural}" + (f"/{rest[1]}" if len(rest) > 1 else "")


class FakeApi:
    """`fail` maps a label to an HTTP status (or a list of statuses, one per call); `answers` maps a label
    to the document it returns."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paths: list[str] = []
        self.bodies: list[Any] = []
        self.fail: dict[str, int | list[int]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self._rv = 100

    def __call__(
        self, verb: str, path: str, body: Any, headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        assert timeout == kube.TIMEOUT  # every request is bounded
        call = label(verb, path)
        self.calls.append(call)
        self.paths.append(path)
        self.bodies.append(body)
        failure = self.fail.get(call)
        if isinstance(failure, list):
            failure = failure.pop(0) if failure else None
        if failure:
            raise ApiException(status=failure, reason="Forbidden")
        if call in self.answers:
            return self.answers[call]
        self._rv += 1
        body = body if isinstance(body, dict) else {}
        metadata = dict(body.get("metadata") or {}, resourceVersion=str(self._rv))
        metadata.setdefault("uid", f"new-{self._rv}")
        metadata.setdefault("name", f"{metadata.get('generateName', '')}{self._rv}")
        return dict(body, metadata=metadata)

    def clients(self) -> kube.Clients:
        return kube.Clients(self)
