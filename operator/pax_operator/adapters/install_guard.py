"""The install guard's I/O: read this install's admission policy and every policy binding (its own, and the
other installs', whose `pax.dev/watch-namespaces` say what their operators watch); core/install.py judges
them. The operator starts no work until the guard passes, and stops if it fails later.

Rights it needs (both read-only): `get` on its own ValidatingAdmissionPolicy (by name) and `list` on
ValidatingAdmissionPolicyBindings (cluster-scoped; a binding holds a policy name, selectors, actions).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pax_operator.adapters.incluster import REQUEST_ERRORS, api_client
from pax_operator.core.install import binding_problems, conflicts, policy_problems, watch_value

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 5.0
CHECK_PERIOD_S = 5.0  # how often the guard looks again, before start-up and after
# Why the guard refuses: policy (the PaxJob pod-authority policy is missing or does not enforce), binding,
# conflict (an older install's operator watches a namespace this one watches), unreachable (the apiserver
# did not answer the guard's reads).
REASONS = ("policy", "binding", "conflict", "unreachable")


@dataclass
class InstallGuard:
    """Checks `policy` (and its binding of the same name) for an operator watching `namespaces` (all when
    empty), and the other installs' bindings."""

    policy: str
    namespaces: tuple[str, ...] = ()
    check_period: float = CHECK_PERIOD_S
    on_record: Callable[[dict[str, bool]], None] = lambda reasons: None  # telemetry: blocked, by reason
    safe: bool = False
    problems: list[str] = field(default_factory=lambda: ["not checked yet"])
    _api: client.AdmissionregistrationV1Api | None = None

    @property
    def api(self) -> client.AdmissionregistrationV1Api:
        if self._api is None:
            self._api = client.AdmissionregistrationV1Api(api_client())
        return self._api

    def _read_policy(self) -> dict[str, Any] | None:
        try:
            response = self.api.read_validating_admission_policy(
                self.policy, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def _bindings(self) -> list[dict[str, Any]]:
        response = self.api.list_validating_admission_policy_binding(
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        return list(json.loads(response.data).get("items") or [])

    def check(self) -> dict[str, list[str]]:
        """One look: the problems by reason ({} when safe). Blocking (run it in a thread)."""
        try:
            policy = self._read_policy()
            bindings = self._bindings()
        except REQUEST_ERRORS as err:
            reason = getattr(err, "reason", None) or err
            return {"unreachable": [f"reading the admission policy {self.policy} and its binding: {reason}"]}
        mine = next((b for b in bindings if b.get("metadata", {}).get("name") == self.policy), None)
        found = {
            "policy": policy_problems(self.policy, policy),
            "binding": binding_problems(self.policy, mine, watch_value(self.namespaces)),
            "conflict": conflicts(mine, bindings) if mine is not None else [],
        }
        return {reason: problems for reason, problems in found.items() if problems}

    def record(self, found: dict[str, list[str]]) -> bool:
        """Keep the outcome of a check (gauge, readiness, a log line when it changes); True: safe."""
        problems = [problem for reason in REASONS for problem in found.get(reason, [])]
        self.on_record({reason: reason in found for reason in REASONS})
        if problems != self.problems:
            if problems:
                log.error(
                    "install guard: not reconciling (no pod is created) until this is fixed: %s",
                    "; ".join(problems),
                )
            else:
                log.info(
                    "install guard: admission policy %s and its binding enforce; no overlapping install",
                    self.policy,
                )
        self.problems, self.safe = problems, not problems
        return self.safe

    async def wait_until_safe(self) -> None:
        """Return once the guard passes (checked every `check_period` seconds until then)."""
        while not self.record(await asyncio.to_thread(self.check)):
            await asyncio.sleep(self.check_period)

    async def watch(self, on_unsafe: Callable[[str], None]) -> None:
        """After start-up: call `on_unsafe(why)` once the policy, its binding or another install goes wrong.
        An apiserver that does not answer is not a reason to stop (the work queue has its own retries)."""
        while True:
            await asyncio.sleep(self.check_period)
            found = await asyncio.to_thread(self.check)
            if "unreachable" in found:
                log.warning("install guard: %s", found["unreachable"][0])
            elif not self.record(found):
                on_unsafe("; ".join(self.problems))
                return
