"""Builders for PaxJob specs, pods and observations shared by the operator unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pax_operator.core.decide import Observed, Plan, Scrape, decide
from pax_operator.core.observe import pod_view
from pax_operator.core.render import JobRef
from pax_operator.spec import PaxJobSpec, PaxJobStatus

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
JOB = JobRef(name="lm", namespace="team-a", uid="uid-1")


SPEC: dict[str, Any] = {  # a 2-host CPU lm_tiny PaxJob's spec, as a user writes it
    "experiment": "lm_tiny",
    "image": "pax/trainer:1",
    "jobLogDir": "gs://bucket/runs/lm",
    "topology": {"cpu": {"hosts": 2}},
}


def make_spec(**overrides: Any) -> PaxJobSpec:
    return PaxJobSpec.model_validate(SPEC | overrides)


@pytest.fixture
def spec() -> PaxJobSpec:
    return make_spec()


def make_pod(
    host: int,
    attempt: int = 0,
    *,
    phase: str = "Running",
    exit_code: int | None = None,
    message: str | None = None,
    deleting: bool = False,
    disruption: str | None = None,
    reason: str | None = None,
    job: str = "lm",
) -> dict[str, Any]:
    """An API pod as a kubelet would report it."""
    state: dict[str, Any] = {"running": {"startedAt": "2026-11-25T11:00:00Z"}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}
        if message is not None:
            state["terminated"]["message"] = message
    status: dict[str, Any] = {
        "phase": phase,
        "podIP": f"10.0.0.{host + 1}",
        "containerStatuses": [] if phase == "Pending" else [{"name": "trainer", "state": state}],
    }
    if disruption:
        status["conditions"] = [{"type": "DisruptionTarget", "status": "True", "reason": disruption}]
    if reason:
        status["reason"] = reason
    metadata: dict[str, Any] = {
        "name": f"{job}-{host}",
        "uid": f"pod-{host}-{attempt}",
        "labels": {
            "pax.dev/job-name": job,
            "pax.dev/host-index": str(host),
            "pax.dev/restart-attempt": str(attempt),
        },
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-25T11:59:00Z"
    return {"metadata": metadata, "status": status}


def step(
    status: PaxJobStatus | dict[str, Any] | None = None,
    pods: list[dict[str, Any]] | None = None,
    spec: PaxJobSpec | None = None,
    *,
    now_plus: float = 0.0,
    scrape: Scrape | None = None,
    metrics_answered: bool = False,
) -> Plan:
    """One decide() of the job with `status` and these API `pods`, `now_plus` seconds after NOW."""
    if not isinstance(status, PaxJobStatus):
        status = PaxJobStatus.model_validate(status or {})
    return decide(
        Observed(
            job=JOB,
            spec=spec or make_spec(),
            status=status,
            pods=[pod_view(p) for p in pods or []],
            now=NOW + timedelta(seconds=now_plus),
            scrape=scrape,
            metrics_answered=metrics_answered,
        )
    )
