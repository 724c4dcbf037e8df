"""Is this install safe to reconcile? Pure checks of its admission policy, its binding, and other installs.

The operator creates pods with its own rights, so it must not create any until the PaxJob pod-authority
policy (deploy/policy/) is enforced: the policy exists, fails closed, matches every PaxJob and PaxSweep
write, and its binding denies in every namespace. Every install's binding also says which namespaces its
operator watches (`pax.dev/watch-namespaces`: `*` or a comma-separated list), which is how two installs
find each other: the newer of two whose namespaces overlap refuses to run (both would create gangs for the
same PaxJobs). The policy's CEL is not compared with a copy: an operator one version older or newer than
the chart that installed the policy still runs; what is checked is that it is enforced and for what.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

WATCH_ANNOTATION = "pax.dev/watch-namespaces"
ALL_NAMESPACES = "*"
PAX_GROUP = "pax.dev"
CHECKED_RESOURCES = ("paxjobs", "paxsweeps")
CHECKED_OPERATIONS = ("CREATE", "UPDATE")


def watch_value(namespaces: Sequence[str]) -> str:
    """The annotation's value for an operator watching `namespaces` (none: all of them)."""
    return ",".join(sorted(set(namespaces))) if namespaces else ALL_NAMESPACES


def _namespaces(value: str) -> frozenset[str] | None:
    """None: all namespaces."""
    value = value.strip()
    if value == ALL_NAMESPACES:
        return None
    return frozenset(part.strip() for part in value.split(",") if part.strip())


def overlap(a: str, b: str) -> str:
    """The namespaces two watch annotations share, as words ('' when none)."""
    first, second = _namespaces(a), _namespaces(b)
    if first is None and second is None:
        return "all namespaces"
    if first is None or second is None:
        return ", ".join(sorted(second if first is None else first or ()))
    return ", ".join(sorted(first & second))


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


def binding_problems(policy: str, binding: Mapping[str, Any] | None, watching: str) -> list[str]:
    """Why `binding` (named like the policy) does not enforce it everywhere for this operator."""
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
    annotation = ((binding.get("metadata") or {}).get("annotations") or {}).get(WATCH_ANNOTATION)
    if annotation is None or _namespaces(annotation) != _namespaces(watching):
        problems.append(
            f"{where}: annotation {WATCH_ANNOTATION}={annotation!r}, but this operator watches {watching!r}"
        )
    return problems


def _age(binding: Mapping[str, Any]) -> tuple[str, str]:
    """Older first; the name breaks a tie (both installs then agree on which is older)."""
    metadata = binding.get("metadata") or {}
    return str(metadata.get("creationTimestamp") or ""), str(metadata.get("name") or "")


def conflicts(mine: Mapping[str, Any], bindings: Iterable[Mapping[str, Any]]) -> list[str]:
    """Other installs, older than this one, whose operators watch namespaces this one watches too."""
    own = mine.get("metadata") or {}
    watching = (own.get("annotations") or {}).get(WATCH_ANNOTATION, ALL_NAMESPACES)
    problems = []
    for other in bindings:
        metadata = other.get("metadata") or {}
        theirs = (metadata.get("annotations") or {}).get(WATCH_ANNOTATION)
        if theirs is None or metadata.get("name") == own.get("name") or not _age(other) < _age(mine):
            continue
        if shared := overlap(watching, theirs):
            problems.append(
                f"another pax-operator install (its ValidatingAdmissionPolicyBinding {metadata.get('name')}, "
                f"older than this one's) watches {shared} too: both would create gangs for the same PaxJobs. "
                "Uninstall one, or give both disjoint watchNamespaces"
            )
    return problems
