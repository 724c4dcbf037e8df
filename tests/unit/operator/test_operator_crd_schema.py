"""The CRD YAML is the schema's single source; the pydantic models must mirror its fields and defaults."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import yaml
from pax_cluster.procs import DEPLOY
from pax_operator.spec import PaxJobSpec, PaxJobStatus, Progress
from pydantic import BaseModel

CRD_PATH = DEPLOY / "crds" / "pax.dev_paxjobs.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside Optional[...] / list[...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _compare(model: type[BaseModel], node: dict[str, Any], path: str, check_defaults: bool) -> list[str]:
    problems: list[str] = []
    if node.get("type") == "array":
        node = node["items"]
    crd_fields = set(node.get("properties", {}))
    model_fields = {info.alias or name: (name, info) for name, info in model.model_fields.items()}
    stored = set(model_fields) | ({model.NON_FINITE_KEY} if model is Progress else set())  # its serializer's
    if crd_fields != stored:
        problems.append(f"{path}: CRD {sorted(crd_fields ^ stored)} differ")
    for alias, (_, info) in model_fields.items():
        child = node.get("properties", {}).get(alias)
        if child is None:
            continue
        if check_defaults and "default" in child and child["default"] != {}:
            default = info.get_default(call_default_factory=True)
            if default != child["default"]:
                problems.append(f"{path}.{alias}: CRD default {child['default']!r} != model {default!r}")
        nested = _model_of(info.annotation)
        if nested is not None and "additionalProperties" not in child:
            problems.extend(_compare(nested, child, f"{path}.{alias}", check_defaults))
    return problems


def test_spec_model_mirrors_crd(schema: dict[str, Any]) -> None:
    assert _compare(PaxJobSpec, schema["properties"]["spec"], "spec", check_defaults=True) == []


def test_status_model_mirrors_crd(schema: dict[str, Any]) -> None:
    assert _compare(PaxJobStatus, schema["properties"]["status"], "status", check_defaults=False) == []


def test_required_fields_have_no_model_default(schema: dict[str, Any]) -> None:
    for alias in schema["properties"]["spec"]["required"]:
        (info,) = [i for n, i in PaxJobSpec.model_fields.items() if (i.alias or n) == alias]
        assert info.is_required(), alias


def test_names_and_printer_columns(crd: dict[str, Any]) -> None:
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "PaxJob",
        "paxjobs",
        ["pj"],
        ["pax"],
    )
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Hosts", "Step", "Restarts", "Reason", "Age"]


def _walk(node: dict[str, Any], path: str) -> typing.Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural_and_described(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema, ""):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if (
            path.startswith(".spec")
            and path.count(".") <= 3
            and "[]" not in path
            and node.get("type") == "object"
        ):
            assert node.get("description"), f"{path} has no description (kubectl explain)"


@pytest.mark.parametrize(
    ("sample", "hosts"),
    [("paxjob-lm-tiny.yaml", 2), ("paxjob-gpu.yaml", 4), ("paxjob-tpu-multislice.yaml", 8)],
)
def test_samples_parse(sample: str, hosts: int) -> None:
    doc = yaml.safe_load((CRD_PATH.parents[1] / "samples" / sample).read_text())
    assert PaxJobSpec.model_validate(doc["spec"]).topology.hosts == hosts


OPENAPI_KEYS = {
    "type", "description", "properties", "required", "items", "additionalProperties", "default", "enum",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "format", "maxItems", "maxProperties", "anyOf",
    "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
}  # fmt: skip


def test_no_stray_keys(crd: dict[str, Any], schema: dict[str, Any]) -> None:
    """Catches YAML slips such as an unquoted comma inside a flow mapping, which add bogus keys."""
    for path, node in _walk(schema, ""):
        assert set(node) <= OPENAPI_KEYS, f"{path}: {sorted(set(node) - OPENAPI_KEYS)}"
    (version,) = crd["spec"]["versions"]
    for column in version["additionalPrinterColumns"]:
        assert set(column) <= {"name", "type", "jsonPath", "description", "priority", "format"}, column


def test_every_number_and_collection_in_spec_is_bounded(schema: dict[str, Any]) -> None:
    """Integers have a maximum, lists maxItems, maps maxProperties: no field lets one PaxJob make the
    operator allocate or compute without limit (issue 7: a 4000x4000x4000 topology, a 10^12 s deadline)."""
    unbounded = []
    for path, node in _walk(schema["properties"]["spec"], ".spec"):
        kind = node.get("type")
        if kind == "integer" and "maximum" not in node:
            unbounded.append(f"{path}: integer without maximum")
        if kind == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: array without maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            unbounded.append(f"{path}: map without maxProperties")
        if node.get("x-kubernetes-int-or-string") and not {"maximum", "maxLength"} <= set(node):
            unbounded.append(f"{path}: int-or-string without bounds")
    assert unbounded == []


def _field_bounds(model: type[BaseModel], alias: str) -> tuple[Any, Any]:
    (info,) = [i for n, i in model.model_fields.items() if (i.alias or n) == alias]
    ge = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    le = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    return ge, le


def test_operator_repeats_the_crd_bounds(schema: dict[str, Any]) -> None:
    """spec.py's bounds (the operator's second line of defence) equal the CRD's minimum/maximum."""
    from pax_operator import spec as models

    spec = schema["properties"]["spec"]["properties"]
    topology = spec["topology"]["properties"]
    pairs = [
        (models.PaxJobSpec, "activeDeadlineSeconds", spec["activeDeadlineSeconds"]),
        (models.PaxJobSpec, "ttlSecondsAfterFinished", spec["ttlSecondsAfterFinished"]),
        (models.PaxJobSpec, "hangTimeoutSeconds", spec["hangTimeoutSeconds"]),
        (models.PaxJobSpec, "checkpointIntervalSteps", spec["checkpointIntervalSteps"]),
        (models.CpuTopology, "hosts", topology["cpu"]["properties"]["hosts"]),
        (models.GpuTopology, "hosts", topology["gpu"]["properties"]["hosts"]),
        (models.GpuTopology, "gpusPerHost", topology["gpu"]["properties"]["gpusPerHost"]),
        (models.TpuTopology, "slices", topology["tpu"]["properties"]["slices"]),
    ]
    pairs += [
        (models.RestartPolicy, name, node) for name, node in spec["restartPolicy"]["properties"].items()
    ]
    for model, alias, node in pairs:
        assert _field_bounds(model, alias) == (node["minimum"], node["maximum"]), (model.__name__, alias)
    assert topology["cpu"]["properties"]["hosts"]["maximum"] == models.MAX_HOSTS
    tpu_rules = " ".join(v["rule"] for v in topology["tpu"]["x-kubernetes-validations"])
    assert f"<= {models.MAX_HOSTS}" in " ".join(tpu_rules.split())
    assert topology["tpu"]["properties"]["topology"]["pattern"] == models.TPU_TOPOLOGY_PATTERN


def test_name_length_keeps_pod_names_dns_labels(schema: dict[str, Any]) -> None:
    from pax_operator.core.render import pod_name
    from pax_operator.spec import MAX_HOSTS, MAX_NAME_LENGTH

    name = schema["properties"]["metadata"]["properties"]["name"]
    assert name["maxLength"] == MAX_NAME_LENGTH
    assert len(pod_name("a" * MAX_NAME_LENGTH, MAX_HOSTS - 1)) <= 63


def test_crd_rules_carry_field_paths_or_sit_on_the_field(schema: dict[str, Any]) -> None:
    """Rules on an object that talk about one of its fields say which (fieldPath), so the apiserver's
    message names the field instead of the object (or `<nil>` at the root)."""
    root_rules = schema.get("x-kubernetes-validations", [])
    assert root_rules and all(r.get("fieldPath", "").startswith(".spec.") for r in root_rules)
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert all(r.get("fieldPath") for r in spec_rules)


def test_spec_model_enforces_bounds_and_the_override_rule() -> None:
    base = {"experiment": "e", "image": "i", "jobLogDir": "gs://b/x", "topology": {"cpu": {"hosts": 1}}}
    for bad in (
        {"activeDeadlineSeconds": 10**12},
        {"ttlSecondsAfterFinished": 10**12},
        {"overrides": {"model.num_layers": "2"}},
        {"topology": {"tpu": {"acceleratorType": "v5p", "topology": "4000x4000x4000"}}},
        {"topology": {"tpu": {"acceleratorType": "v5p", "topology": "16x16x32", "slices": 64}}},
        {"topology": {}},
        {"podTemplate": {"env": [{"name": "JAX_PROCESS_ID", "value": "0"}]}},  # the contract's own
        {"podTemplate": {"env": [{"name": "POD_IP", "value": "10.0.0.1"}]}},
    ):
        with pytest.raises(ValueError):
            PaxJobSpec.model_validate(base | bad)
    assert PaxJobSpec.model_validate(base | {"podTemplate": {"env": [{"name": "XLA_FLAGS", "value": "x"}]}})
