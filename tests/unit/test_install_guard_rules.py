"""The install guard's rules (operator/pax_operator/core/install.py): the operator reconciles nothing until
its pod-authority policy and binding enforce, and the newer of two installs watching a shared namespace
refuses to run. The policy checked is the one deploy/ and the chart ship."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from pax_cluster.procs import DEPLOY
from pax_operator.adapters.install_guard import InstallGuard
from pax_operator.adapters.lease import Leadership
from pax_operator.core.install import binding_problems, conflicts, overlap, policy_problems, watch_value

POLICY = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority.yaml").read_text())
BINDING = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority_binding.yaml").read_text())
NAME = POLICY["metadata"]["name"]


def _binding(name: str, watch: str | None, created: str = "2026-11-30T10:00:00Z") -> dict[str, Any]:
    annotations = {} if watch is None else {"pax.dev/watch-namespaces": watch}
    return {
        "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }


def test_the_shipped_policy_and_binding_pass() -> None:
    assert policy_problems(NAME, POLICY) == []
    assert binding_problems(NAME, BINDING, watch_value([])) == []
    assert BINDING["spec"]["policyName"] == NAME


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.update(failurePolicy="Ignore"), "failurePolicy is Ignore, not Fail"),
        (lambda s: s.update(validations=[]), "has no validations"),
        (
            lambda s: s["matchConstraints"]["resourceRules"][0].update(resources=["paxjobs"]),
            "does not match CREATE paxsweeps, UPDATE paxsweeps",
        ),
        (
            lambda s: s["matchConstraints"]["resourceRules"][0].update(operations=["CREATE"]),
            "does not match UPDATE paxjobs, UPDATE paxsweeps",
        ),
        (
            lambda s: s["matchConstraints"].update(namespaceSelector={"matchLabels": {"a": "b"}}),
            "matchConstraints.namespaceSelector is not empty",
        ),
        (
            lambda s: s["matchConstraints"].update(excludeResourceRules=[{"resources": ["paxjobs"]}]),
            "excludeResourceRules is set",
        ),
        (lambda s: s.update(paramKind={"kind": "ConfigMap"}), "has a paramKind"),
    ],
)
def test_a_policy_that_does_not_check_every_write_is_refused(edit: Any, expected: str) -> None:
    policy = copy.deepcopy(POLICY)
    edit(policy["spec"])
    problems = policy_problems(NAME, policy)
    assert len(problems) == 1 and expected in problems[0], problems


def test_a_missing_policy_or_binding_is_named() -> None:
    assert policy_problems(NAME, None) == [f"ValidatingAdmissionPolicy {NAME} does not exist"]
    assert binding_problems(NAME, None, "*") == [f"ValidatingAdmissionPolicyBinding {NAME} does not exist"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda b: b["spec"].update(validationActions=["Audit", "Warn"]), "lack Deny"),
        (lambda b: b["spec"].update(policyName="other"), "binds policy 'other'"),
        (
            lambda b: b["spec"].update(matchResources={"namespaceSelector": {"matchLabels": {"x": "y"}}}),
            "matchResources.namespaceSelector is not empty",
        ),
        (
            lambda b: b["spec"].update(matchResources={"excludeResourceRules": [{"resources": ["paxjobs"]}]}),
            "matchResources.excludeResourceRules is set",
        ),
        (lambda b: b["spec"].update(paramRef={"name": "x"}), "has a paramRef"),
        (
            lambda b: b["metadata"]["annotations"].update({"pax.dev/watch-namespaces": "team-a"}),
            "annotation pax.dev/watch-namespaces='team-a', but this operator watches '*'",
        ),
        (lambda b: b["metadata"].pop("annotations"), "annotation pax.dev/watch-namespaces=None"),
    ],
)
def test_a_binding_that_does_not_enforce_everywhere_is_refused(edit: Any, expected: str) -> None:
    binding = copy.deepcopy(BINDING)
    edit(binding)
    problems = binding_problems(NAME, binding, "*")
    assert len(problems) == 1 and expected in problems[0], problems


def test_defaulted_empty_match_resources_pass() -> None:
    """The apiserver fills in empty selectors and matchPolicy: those narrow nothing."""
    binding = copy.deepcopy(BINDING)
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {},
        "objectSelector": {},
        "matchPolicy": "Equivalent",
    }
    assert binding_problems(NAME, binding, "*") == []


def test_watch_annotation_is_order_free() -> None:
    assert watch_value(["b", "a", "b"]) == "a,b" and watch_value([]) == "*"
    assert binding_problems("x", _binding("x", "b, a"), "a,b") == []


@pytest.mark.parametrize(
    ("mine", "theirs", "shared"),
    [
        ("*", "*", "all namespaces"),
        ("*", "team-a", "team-a"),  # a cluster-wide install beside a namespaced one
        ("team-a,team-b", "*", "team-a, team-b"),
        ("team-a,team-b", "team-b,team-c", "team-b"),
        ("team-a", "team-b", ""),
    ],
)
def test_overlap(mine: str, theirs: str, shared: str) -> None:
    assert overlap(mine, theirs) == shared == overlap(theirs, mine)


def test_the_newer_of_two_overlapping_installs_refuses_and_the_older_runs() -> None:
    older = _binding("a-pax-operator-paxjob-pod-authority", "*", created="2026-11-30T10:00:00Z")
    newer = _binding("b-pax-operator-paxjob-pod-authority", "team-a", created="2026-11-30T10:00:01Z")
    everything = [older, newer, _binding("unrelated", None, created="2026-01-01T00:00:00Z")]
    assert conflicts(older, everything) == []
    (problem,) = conflicts(newer, everything)
    assert "a-pax-operator-paxjob-pod-authority" in problem and "watches team-a too" in problem
    # Created in the same second: the name decides, the same way for both.
    tied = _binding("b-pax-operator-paxjob-pod-authority", "team-a", created="2026-11-30T10:00:00Z")
    assert conflicts(older, [older, tied]) == [] and len(conflicts(tied, [older, tied])) == 1


def test_disjoint_installs_both_run() -> None:
    a = _binding("a", "team-a", created="2026-11-30T10:00:00Z")
    b = _binding("b", "team-b", created="2026-11-30T10:00:01Z")
    assert conflicts(a, [a, b]) == conflicts(b, [a, b]) == []


class FakeAdmission:
    """read_validating_admission_policy / list_validating_admission_policy_binding over plain dicts."""

    def __init__(self, policy: dict[str, Any] | None, bindings: list[dict[str, Any]]) -> None:
        self.policy, self.bindings = policy, bindings

    def read_validating_admission_policy(self, name: str, **_: Any) -> Any:
        if self.policy is None or self.policy["metadata"]["name"] != name:
            raise ApiException(status=404, reason="Not Found")
        return _Response(self.policy)

    def list_validating_admission_policy_binding(self, **_: Any) -> Any:
        return _Response({"items": self.bindings})


class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()


async def _within_a_second(done: Callable[[], bool]) -> None:
    """Let the guard's and the campaign's tasks run until `done()` (at most about a second)."""
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0.01)


def test_leadership_starts_no_work_until_the_guard_passes() -> None:
    """No elector: the work starts once the policy and binding appear, not before; not ready meanwhile."""
    binding = copy.deepcopy(BINDING)
    binding["metadata"]["creationTimestamp"] = "2026-11-30T10:00:00Z"
    api = FakeAdmission(None, [])
    guard = InstallGuard(NAME, check_period=0.01, _api=api)  # type: ignore[arg-type]
    leadership = Leadership(guard=guard)
    started: list[bool] = []

    async def scenario() -> None:
        leadership.start(lambda: started.append(True))
        await asyncio.sleep(0.1)
        assert not started and not leadership.may_write()
        ready, why = leadership.readiness()
        assert not ready and f"ValidatingAdmissionPolicy {NAME} does not exist" in why, why
        api.policy, api.bindings = POLICY, [binding]
        await _within_a_second(lambda: bool(started))
        assert started and leadership.may_write() and leadership.readiness() == (True, "running")
        await leadership.stop()

    asyncio.run(scenario())


def test_leadership_stops_the_operator_when_the_policy_goes() -> None:
    binding = copy.deepcopy(BINDING)
    binding["metadata"]["creationTimestamp"] = "2026-11-30T10:00:00Z"
    api = FakeAdmission(POLICY, [binding])
    stopped: list[bool] = []
    leadership = Leadership(
        guard=InstallGuard(NAME, check_period=0.01, _api=api),  # type: ignore[arg-type]
        stop_operator=lambda: stopped.append(True),
    )

    async def scenario() -> None:
        leadership.start(lambda: None)
        await _within_a_second(lambda: leadership.started)
        assert leadership.started and not stopped
        api.bindings = []  # `kubectl delete validatingadmissionpolicybinding ...`
        await _within_a_second(lambda: bool(stopped))
        assert stopped and not leadership.may_write()
        await leadership.stop()

    asyncio.run(scenario())


def test_a_blocked_replica_does_not_campaign_for_the_lease() -> None:
    """With leader election: the guard comes first, so a blocked replica never takes the Lease from a
    replica that could run (nor holds it while it cannot)."""
    from pax_operator.adapters.lease import Elector, LeaderElectionConfig

    class Leases:
        calls = 0

        def read_namespaced_lease(self, *_: Any, **__: Any) -> Any:
            Leases.calls += 1
            raise ApiException(status=404)

        def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
            Leases.calls += 1
            return _Response({**body, "metadata": {**body["metadata"], "resourceVersion": "1"}})

    binding = copy.deepcopy(BINDING)
    binding["metadata"]["creationTimestamp"] = "2026-11-30T10:00:00Z"
    api = FakeAdmission(POLICY, [])  # no binding yet
    settings = LeaderElectionConfig(
        namespace="ns", identity="a", retry_period=0.01, renew_deadline=5, lease_duration=10
    )
    elector = Elector(settings, api=Leases())  # type: ignore[arg-type]
    guard = InstallGuard(NAME, check_period=0.01, _api=api)  # type: ignore[arg-type]
    leadership = Leadership(elector=elector, guard=guard)
    started: list[bool] = []

    async def scenario() -> None:
        leadership.start(lambda: started.append(True))
        await asyncio.sleep(0.1)
        assert Leases.calls == 0 and not started
        api.bindings = [binding]
        for _ in range(200):
            if started:
                break
            await asyncio.sleep(0.01)
        assert started and Leases.calls > 0 and leadership.readiness() == (True, "leading")
        elector.leading = False  # no release round-trip at the end
        await leadership.stop()

    asyncio.run(scenario())


def test_an_unanswered_guard_read_is_unreachable_not_a_dead_guard() -> None:
    """urllib3's MaxRetryError (a refused connection; not an OSError) escaped `check`: the guard's task
    died, start-up waited for ever, or, after start-up, deleting the policy went unnoticed."""
    api = FakeAdmission(POLICY, [BINDING])

    def refused(**_: Any) -> Any:
        raise urllib3.exceptions.MaxRetryError(None, "/apis", reason=OSError("connection refused"))

    api.list_validating_admission_policy_binding = refused  # type: ignore[method-assign]
    found = InstallGuard(NAME, _api=api).check()  # type: ignore[arg-type]
    assert list(found) == ["unreachable"] and "connection refused" in found["unreachable"][0], found


def test_a_guard_or_campaign_that_dies_of_an_error_stops_the_operator() -> None:
    """A backstop for errors nobody foresaw: the task dying stops the process (a restart campaigns again)."""
    stopped: list[bool] = []
    guard = InstallGuard(NAME, check_period=0.01, _api=FakeAdmission(POLICY, [BINDING]))  # type: ignore[arg-type]
    leadership = Leadership(guard=guard, stop_operator=lambda: stopped.append(True))

    def broken() -> dict[str, list[str]]:
        raise RuntimeError("a bug")

    async def scenario() -> None:
        guard.check = broken  # type: ignore[method-assign]
        leadership.start(lambda: None)
        await _within_a_second(lambda: bool(stopped))
        assert stopped and not leadership.may_write()
        await leadership.stop()

    asyncio.run(scenario())
