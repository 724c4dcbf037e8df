"""charts/pax-operator checks that need neither helm nor a cluster."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml
from pax_cluster.procs import DEPLOY, REPO_ROOT

CHART = REPO_ROOT / "charts" / "pax-operator"
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def test_chart_crds_are_deploys_crds() -> None:
    """One source of truth: each chart CRD is a symlink into deploy/crds (helm follows it, package too)."""
    chart_crds = sorted(p.name for p in (CHART / "crds").iterdir())
    assert chart_crds == sorted(p.name for p in (DEPLOY / "crds").glob("*.yaml"))
    for name in chart_crds:
        link = CHART / "crds" / name
        assert link.is_symlink(), f"{link} must be a symlink to deploy/crds/{name}, not a copy"
        assert link.resolve() == (DEPLOY / "crds" / name).resolve()


def _define(tpl: str, name: str) -> list[dict[str, Any]]:
    match = re.search(r'\{\{- define "' + re.escape(name) + r'" -\}\}\n(.*?)\{\{- end \}\}', tpl, re.S)
    assert match, f"no define {name!r} in _helpers.tpl"
    return yaml.safe_load(match.group(1))


def test_chart_rules_equal_deploy_rbac() -> None:
    tpl = (CHART / "templates" / "_helpers.tpl").read_text()
    rules = _define(tpl, "pax-operator.namespacedRules") + _define(tpl, "pax-operator.clusterRules")
    deployed = yaml.safe_load((DEPLOY / "rbac" / "cluster_role.yaml").read_text())["rules"]
    # The install guard's rules name the release's policy: clusterrole.yaml renders them (test_helm.py).
    guard = [r for r in deployed if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert [r["verbs"] for r in guard] == [["get"], ["list"]]
    assert rules == [r for r in deployed if r not in guard]


def test_app_version_matches_project_and_deploy_image() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    deployment = yaml.safe_load((DEPLOY / "operator" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert image == f"{values['image']['repository']}:{chart['appVersion']}"


def _check(value: Any, schema: dict[str, Any], defs: dict[str, Any], where: str) -> None:
    """A small subset of JSON Schema: $ref, type, properties, additionalProperties, items."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    types = schema.get("type")
    if types is not None:
        allowed = tuple(JSON_TYPES[t] for t in ([types] if isinstance(types, str) else types))
        flat = tuple(t for a in allowed for t in (a if isinstance(a, tuple) else (a,)))
        assert isinstance(value, flat) and not (isinstance(value, bool) and bool not in flat), where
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, sub in value.items():
            if key in props:
                _check(sub, props[key], defs, f"{where}/{key}")
            elif extra is False:
                pytest.fail(f"{where}/{key}: not in values.schema.json")
            elif isinstance(extra, dict):
                _check(sub, extra, defs, f"{where}/{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], defs, f"{where}/{i}")


def test_values_match_strict_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    _check(values, schema, schema["definitions"], "")
    # Strict: every object that is not a free-form map says so.
    assert schema["additionalProperties"] is False
    for key in ("image", "serviceAccount", "rbac", "resources"):
        assert schema["properties"][key]["additionalProperties"] is False, key
    # Every documented top-level value has a default in values.yaml (global is Helm's own).
    assert set(schema["properties"]) - {"global"} == set(values)


def test_pod_authority_policy_in_kustomize_and_chart() -> None:
    """deploy/policy is applied by kustomize and enforced by its binding; the chart ships the same spec."""
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    paths = sorted((DEPLOY / "policy").glob("*.yaml"))
    assert [f"policy/{p.name}" for p in paths] == [
        r for r in kustomization["resources"] if r.startswith("policy/")
    ]
    docs = {d["kind"]: d for d in (yaml.safe_load(p.read_text()) for p in paths)}
    policy, binding = docs["ValidatingAdmissionPolicy"], docs["ValidatingAdmissionPolicyBinding"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    link = CHART / "files" / "paxjob_pod_authority.yaml"
    assert link.is_symlink() and link.resolve() == (DEPLOY / "policy" / "paxjob_pod_authority.yaml").resolve()
