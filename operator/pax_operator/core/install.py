"""Is this install safe to reconcile? Pure checks of its admission policy and its binding.

The operator creates pods with its own rights, so it must not create any until the PaxJob pod-authority
policy (deploy/policy/) is enforced: the policy exists, fails closed, matches every PaxJob and PaxSweep
write, and its binding denies in every namespace. The policy's CEL is not compared with a copy: an operator
one version older or newer than the chart that installed the policy still runs; what is checked is that it
is enforced and for what.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PAX_GROUP = "pax.dev"
CHECKED_RESOURCES = ("paxjobs", "paxsweeps")
CHECKED_OPERATIONS = ("CREATE", "UPDATE")


def _empty_selector(selector: Mapping[str, Any] | None) -> bool:
    return not selector or (not selector.get("matchLabels") and not selector.get("matchExpressions"))


def _covers(rule: Mapping[str, Any], resource: str, operation: str) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    return has("apiGroups", PAX_GROUP) and has("resources", resource) and has("operations", operation)


def policy_problems(name: str, policy: Mapping[str, Any] | None) -> list[str]:
    """Why `policy` does not check every PaxJob and PaxSweep write ([] when it does)."""
    if policy is None:
        return [f"ValidatingAdmissionPolicy {name} does not exist"]
    spec = policy.get("spec") or {}
    where = f"ValidatingAdmissionPolicy {name}"
    problems = []
    if spec.get("failurePolicy", "Fail") != "Fail":
        problems.append(f"{where}: failurePolicy is {spec['failurePolicy']}, not Fail")
    if spec.get("paramKind"):
        problems.append(f"{where}: has a paramKind (this policy takes no parameters)")
    if not spec.get("validations"):
        problems.append(f"{where}: has no validations")
    constraints = spec.get("matchConstraints") or {}
    rules = constraints.get("resourceRules") or []
    missing = [
        f"{operation} {resource}"
        for resource in CHECKED_RESOURCES
        for operation in CHECKED_OPERATIONS
        if not any(_covers(rule, resource, operation) for rule in rules)
    ]
    if missing:
        problems.append(f"{where}: does not match {', '.join(missing)}")
    if constraints.get("excludeResourceRules"):
        problems.append(f"{where}: matchConstraints.excludeResourceRules is set")
    for selector in ("namespaceSelector", "objectSelector"):
        if not _empty_selector(constraints.get(selector)):
            problems.append(f"{where}: matchConstraints.{selector} is not empty")
    return problems


def binding_problems(policy: str, binding: Mapping[str, Any] | None) -> list[str]:
    """Why `binding` (named like the policy) does not enforce it everywhere."""
    if binding is None:
        return [f"ValidatingAdmissionPolicyBinding {policy} does not exist"]
    spec = binding.get("spec") or {}
    where = f"ValidatingAdmissionPolicyBinding {policy}"
    problems = []
    if spec.get("policyName") != policy:
        problems.append(f"{where}: binds policy {spec.get('policyName')!r}, not {policy}")
    if "Deny" not in (spec.get("validationActions") or []):
        problems.append(f"{where}: validationActions {spec.get('validationActions')} lack Deny")
    if spec.get("paramRef"):
        problems.append(f"{where}: has a paramRef")
    match = spec.get("matchResources") or {}
    for narrowing in ("resourceRules", "excludeResourceRules"):
        if match.get(narrowing):
            problems.append(f"{where}: matchResources.{narrowing} is set")
    for selector in ("namespaceSelector", "objectSelector"):
        if not _empty_selector(match.get(selector)):
            problems.append(f"{where}: matchResources.{selector} is not empty")
    return problems
