"""The docs name only what exists, with the values it has: manifests that parse, CRD fields and defaults,
operator metrics, labels and annotations, condition types and event reasons, files, tests and environment
variables — and the user-facing names in the code are documented. No cluster (see
tests/integration/test_docs_examples.py for the apiserver's verdict on the manifests)."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pax_cluster.procs import DEPLOY, REPO_ROOT
from pax_operator.spec import MAX_NAME_LENGTH, ConditionType, PaxJobSpec
from pax_operator.sweep.spec import PaxSweepSpec
from pydantic import BaseModel

from tests.docs_snippets import DOCS, Manifest, blocks, code_spans, code_texts, manifests, tables

OPERATOR = REPO_ROOT / "operator" / "pax_operator"
SWEEP_SOURCES = sorted((OPERATOR / "sweep").glob("*.py"))
PAXJOB_SOURCES = sorted(p for p in OPERATOR.rglob("*.py") if "sweep" not in p.parts)
SCHEMAS = {
    kind: yaml.safe_load((DEPLOY / "crds" / f"pax.dev_{kind}.yaml").read_text())["spec"]["versions"][0][
        "schema"
    ]["openAPIV3Schema"]
    for kind in ("paxjobs", "paxsweeps")
}
SWEEP_NAME_MAX = 46  # the CRD's rule: trial PaxJob names <sweep>-<index> stay within MAX_NAME_LENGTH


def _doc(name: str) -> str:
    return " ".join((REPO_ROOT / name).read_text().split())


ALL_DOCS = "\n".join(path.read_text() for path in DOCS)


# --- manifests ----------------------------------------------------------------------------------------


def test_there_are_manifests_to_check() -> None:
    assert {m.kind for m in manifests()} == {"PaxJob", "PaxSweep"}


@pytest.mark.parametrize("manifest", [m for m in manifests() if not m.rejected], ids=lambda m: m.where)
def test_doc_manifest_is_a_complete_object(manifest: Manifest) -> None:
    """Required fields, known fields only, bounds: what the models (mirrors of the CRDs) accept."""
    body = manifest.body
    assert body["apiVersion"] == "pax.dev/v1alpha1"
    name = body["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name)
    if manifest.kind == "PaxJob":
        assert len(name) <= MAX_NAME_LENGTH
        PaxJobSpec.model_validate(body["spec"])
    else:
        assert len(name) <= SWEEP_NAME_MAX
        PaxSweepSpec.model_validate(body["spec"])


# --- CRD fields and defaults ----------------------------------------------------------------------------


def _resolve(node: dict[str, Any], parts: list[str]) -> bool:
    for part in parts:
        while node.get("type") == "array" and "items" in node:
            node = node["items"]
        props = node.get("properties", {})
        if part not in props:
            return False
        node = props[part]
    return True


def _field_path_exists(path: str) -> bool:
    """`spec.topology.tpu`, `status.progress.metrics`, or a path relative to a spec (`podTemplate.env`,
    `template.overrides`, `objective.aggregation`), in the PaxJob or the PaxSweep CRD."""
    parts = [p for p in re.sub(r"\[[^\]]*\]", "", path).split(".") if p]
    roots = [
        node
        for schema in SCHEMAS.values()
        for node in (schema, schema["properties"]["spec"], schema["properties"]["status"])
    ]
    return any(_resolve(root, parts) for root in roots)


_SPEC_WORDS = (
    "spec|status|podTemplate|template|topology|restartPolicy|tensorboard|objective|algorithm|earlyStopping|"
    "progress|trials|bestTrial|lastRestart"
)


def test_field_paths_in_the_docs_exist_in_the_crds() -> None:
    paths = {
        span.split(":")[0].split(" ")[0]
        for doc in DOCS
        for span in code_spans(doc)
        if re.fullmatch(rf"(?:{_SPEC_WORDS})(?:\.\w+(?:\[\])?)+(?:[:=].*| .*)?", span)
    }
    paths = {p for p in paths if not p.endswith(".py")} - {"status.podIP"}  # a file, a Pod's own field
    assert len(paths) >= 15, paths
    assert sorted(p for p in paths if not _field_path_exists(p)) == []


def _paxjob_table() -> list[list[str]]:
    (table,) = [
        t for t in tables(REPO_ROOT / "docs" / "operator.md") if t[0] == ["Field", "Meaning (default)"]
    ]
    return table[1:]


def _crd_node(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = schema
    for part in dotted.split("."):
        node = node.get("items", node) if node.get("type") == "array" else node
        node = node["properties"][part]
    return node


def _model_default(model: type[BaseModel], dotted: str) -> Any:
    head, _, rest = dotted.partition(".")
    (info,) = [i for n, i in model.model_fields.items() if (i.alias or n) == head]
    if not rest:
        return info.get_default(call_default_factory=True)
    nested = next(
        a
        for a in (info.annotation, *typing.get_args(info.annotation))
        if isinstance(a, type) and issubclass(a, BaseModel)
    )
    return _model_default(nested, rest)


def _same(stated: str, value: Any) -> bool:
    if isinstance(value, bool):
        return stated == str(value).lower()
    if isinstance(value, int | float):
        return re.fullmatch(r"-?[\d.]+", stated) is not None and float(stated) == value
    return stated == str(value)


def test_paxjob_spec_table_defaults_are_the_crds_and_the_models() -> None:
    """`restartPolicy` | `{maxPreemptions (100), ...}`: each `name (default)` is the CRD's and spec.py's."""
    spec = SCHEMAS["paxjobs"]["properties"]["spec"]
    checked = []
    for field_cell, meaning in _paxjob_table():
        fields = re.findall(r"`([\w.]+)`", field_cell)
        for field in fields:
            assert _field_path_exists(f"spec.{field}"), field
        pairs = re.findall(r"`?(?:--)?(\w+)`? \(`?(-?[\w.]+)`?\)", meaning)
        if len(fields) == 1 and (last := re.search(r"\((\w+)\)$", meaning.rstrip(". "))):
            pairs.append((fields[0].split(".")[-1], last.group(1)))
        for name, stated in pairs:
            candidates = [f for f in fields if f.split(".")[-1] == name] or [f"{f}.{name}" for f in fields]
            candidates = [f for f in candidates if _resolve(spec, f.split("."))]
            if not candidates and len(fields) == 1:  # "stalls this long (1800)": the row's one field
                candidates = fields
            for dotted in candidates:
                crd = _crd_node(spec, dotted)
                assert "default" in crd, f"{dotted}: the docs say ({stated}), the CRD has no default"
                assert _same(stated, crd["default"]), f"{dotted}: docs ({stated}), CRD {crd['default']!r}"
                model = _model_default(PaxJobSpec, dotted)
                assert _same(stated, model), f"{dotted}: docs ({stated}), spec.py {model!r}"
                checked.append(dotted)
    assert len(checked) >= 8, checked


def _defaults(model: type[BaseModel], node: dict[str, Any], path: str) -> list[str]:
    """Each CRD default under `node` equals the model's (recursively)."""
    problems = []
    if node.get("type") == "array":
        node = node["items"]
    for name, info in model.model_fields.items():
        alias = info.alias or name
        child = node.get("properties", {}).get(alias)
        if child is None:
            problems.append(f"{path}.{alias}: not in the CRD")
            continue
        if "default" in child and child["default"] != {}:
            default = info.get_default(call_default_factory=True)
            if default != child["default"]:
                problems.append(f"{path}.{alias}: CRD {child['default']!r}, model {default!r}")
        nested = next(
            (
                a
                for a in (info.annotation, *typing.get_args(info.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
        if nested is not None:
            problems += _defaults(nested, child, f"{path}.{alias}")
    return problems


def test_paxsweep_crd_defaults_are_the_models() -> None:
    assert _defaults(PaxSweepSpec, SCHEMAS["paxsweeps"]["properties"]["spec"], "spec") == []


def test_sweep_spec_table_defaults_are_the_crds() -> None:
    spec = SCHEMAS["paxsweeps"]["properties"]["spec"]
    (table,) = [t for t in tables(REPO_ROOT / "docs" / "sweep.md") if t[0][:2] == ["Field", "Default"]]
    for row in table[1:]:
        for field in re.findall(r"`([\w.]+)`", row[0]):
            assert _resolve(spec, field.split(".")), field
            stated = row[1].strip("`")
            crd = _crd_node(spec, field)
            if stated in ("—", "required"):
                assert "default" not in crd, field
                continue
            assert _same(stated, crd.get("default")), f"{field}: docs {stated}, CRD {crd.get('default')!r}"
            assert _same(stated, _model_default(PaxSweepSpec, field)), field


# --- operator metrics -----------------------------------------------------------------------------------


def test_operator_metrics_table_is_telemetry() -> None:
    from pax_operator import telemetry
    from prometheus_client import REGISTRY

    assert telemetry.REGISTRY is REGISTRY  # importing telemetry registered its metrics there
    registered = {
        metric.name
        for metric in REGISTRY.collect()
        if metric.name.startswith("pax_operator_") and not metric.name.startswith("pax_operator_python")
    }
    (table,) = [t for t in tables(REPO_ROOT / "docs" / "operator.md") if t[0] == ["metric", "what"]]
    documented = {name for row in table[1:] for name in re.findall(r"`(pax_operator_\w+)", " ".join(row))}
    # prometheus_client reports counters without their _total suffix
    documented_names = {re.sub(r"_total$", "", name) for name in documented}
    assert registered == documented_names


# --- labels, annotations --------------------------------------------------------------------------------


def _source_strings(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
            elif isinstance(node, ast.JoinedStr):  # f"{GROUP}/sweep-name"
                parts = node.values
                if len(parts) == 2 and isinstance(parts[1], ast.Constant) and str(parts[1].value)[:1] == "/":
                    found.add(f"pax.dev{parts[1].value}")
    return found


def test_labels_and_annotations() -> None:
    code = REPO_ROOT / "contract" / "pax_contract"
    keys = {
        s
        for s in _source_strings([*OPERATOR.rglob("*.py"), *code.glob("*.py")])
        if re.fullmatch(r"pax\.dev/[a-z-]+", s)
    }
    keys -= {"pax.dev/operator"}  # the Events' reportingComponent and kopf's (never added) finalizer
    assert {"pax.dev/job-name", "pax.dev/sweep-trial"} <= keys
    documented = set(re.findall(r"pax\.dev/[a-z][a-z0-9-]*", ALL_DOCS)) - {"pax.dev/v1alpha1"}
    assert sorted(keys - documented) == [], "used in the code, not in the docs"
    assert sorted(documented - keys) == [], "in the docs, not in the code"


# --- conditions and event reasons ---------------------------------------------------------------------


def _call_constants(paths: list[Path], function: str, position: int) -> set[str]:
    """The string constants passed as argument `position` of calls to `function`."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == function and len(node.args) > position:
                arg = node.args[position]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
    return found


def _name_constants(paths: list[Path], pattern: str) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and any(isinstance(t, ast.Name) and re.fullmatch(pattern, t.id) for t in node.targets)
            ):
                found.add(str(node.value.value))
    return found


def _documented(word: str, text: str) -> bool:
    return re.search(rf"`{word}`|\b{word}\b", text) is not None


def test_paxjob_conditions_and_event_reasons_are_documented() -> None:
    text = _doc("docs/operator.md") + _doc("docs/contract.md")
    reasons = _call_constants(PAXJOB_SOURCES, "Event", 1) | {"FailedCreatePod"}  # reconcile.py picks it
    assert {"GangCreated", "SpecChanged", "FailedApply"} <= reasons
    missing = [c.value for c in ConditionType if not _documented(c.value, text)]
    missing += sorted(r for r in reasons if not _documented(r, text))
    assert missing == []


def test_paxsweep_conditions_and_reasons_are_documented() -> None:
    text = _doc("docs/sweep.md")
    conditions = _call_constants(SWEEP_SOURCES, "set_condition", 1) | _name_constants(
        SWEEP_SOURCES, "CONDITION_.*"
    )
    reasons = (
        _call_constants(SWEEP_SOURCES, "Event", 1)
        | _call_constants(SWEEP_SOURCES, "_finish", 4)
        | _call_constants(SWEEP_SOURCES, "fail", 0)
    )
    assert {"Describing", "TrialCreationBlocked"} <= conditions and {"GoalReached", "NewBestTrial"} <= reasons
    missing = sorted(c for c in conditions | reasons if not _documented(c, text))
    assert missing == []


# --- files, tests, environment --------------------------------------------------------------------------

_REPO_DIRS = ("deploy", "docs", "tests", "hack", "charts", "operator", "trainer", "contract", "examples")


def test_repo_paths_in_the_docs_exist() -> None:
    checked = 0
    for doc in DOCS:
        for span in code_texts(doc):
            for path in re.findall(rf"(?<![\w./$-])((?:{'|'.join(_REPO_DIRS)})/[\w./*-]*)", span):
                path = path.rstrip(".")
                if "<" in path:  # a pattern such as deploy/samples/<name>.yaml
                    continue
                matches = list(REPO_ROOT.glob(path)) if "*" in path else [REPO_ROOT / path]
                assert matches and all(m.exists() for m in matches), f"{doc.name}: {path}"
                checked += 1
            module = re.fullmatch(r"(pax_\w+)/([\w/]+\.py)", span)
            if module:
                hits = list(REPO_ROOT.glob(f"*/{module.group(1)}/{module.group(2)}"))
                assert hits, f"{doc.name}: {span}"
    assert checked >= 30


def test_test_names_in_the_docs_exist() -> None:
    names = set(re.findall(r"`(test_\w+?)(?:\.py)?`", ALL_DOCS))
    assert names
    sources = "\n".join(p.read_text() for p in (REPO_ROOT / "tests").rglob("*.py"))
    files = {p.stem for p in (REPO_ROOT / "tests").rglob("test_*.py")}
    assert sorted(n for n in names if n not in files and f"def {n}(" not in sources) == []


def test_environment_variables_in_the_docs_exist() -> None:
    names = set(re.findall(r"\b((?:PAX|JAX|MEGASCALE)_[A-Z_]+[A-Z])\b", ALL_DOCS))
    sources = "\n".join(
        p.read_text()
        for d in ("contract", "trainer", "operator", "hack", "tests")
        for p in (REPO_ROOT / d).rglob("*.py")
    )
    sources += (REPO_ROOT / "Dockerfile").read_text()
    assert len(names) >= 15
    assert sorted(n for n in names if n not in sources and not n.endswith("_")) == []


def test_trainer_hyperparameters_list_is_base_experiment() -> None:
    from pax_trainer.base_experiment import BaseExperiment

    hints = {k for cls in BaseExperiment.__mro__ for k in getattr(cls, "__annotations__", {})}
    hints -= {"description"}  # the experiment's text, not a hyperparameter
    text = _doc("docs/trainer.md")
    listed = re.search(r"Common hyperparameters \(`BaseExperiment`\): (.*?)Accelerator knobs", text)
    assert listed is not None
    documented = set(re.findall(r"\b[a-z]\w+\b", " ".join(re.findall(r"`([^`]+)`", listed.group(1)))))
    assert sorted(hints - documented) == []


# --- RBAC -----------------------------------------------------------------------------------------------

_VERB = r"(?:get|list|watch|create|delete|update|patch)"


def test_operator_rbac_paragraph_is_the_cluster_role() -> None:
    """docs/operator.md's `resource verb/verb` list names exactly the ClusterRole's rules."""
    role = yaml.safe_load((DEPLOY / "rbac" / "cluster_role.yaml").read_text())
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    section = _doc("docs/operator.md").split("## RBAC", 1)[1].split("##", 1)[0]
    documented: dict[str, set[str]] = {}
    pattern = rf"\b([a-z]+(?:/[a-z]+)?(?: and [a-z]+)?) ({_VERB}(?:/{_VERB})*)\b"
    for resources, verbs in re.findall(pattern, section):  # "crds and namespaces get/list/watch": both
        for name in resources.split(" and "):
            documented.setdefault(name, set()).update(verbs.split("/"))
    assert documented == granted


# --- accelerator knobs ----------------------------------------------------------------------------------


def test_accelerator_knobs_table_is_the_experiments() -> None:
    """docs/accelerator.md's knobs are hyperparameters of every LM, with the values the code accepts, and the
    lm_1b defaults it states are lm_1b's."""
    from pax_trainer.experiments.lm_1b import Lm1B
    from pax_trainer.experiments.transformer import ATTENTION_IMPLS, REMAT_POLICIES
    from pax_trainer.experiments.transformer_lm import TransformerLmExperiment

    (table,) = [t for t in tables(REPO_ROOT / "docs" / "accelerator.md") if t[0][0] == "hyperparameter"]
    hints = {k for cls in TransformerLmExperiment.__mro__ for k in getattr(cls, "__annotations__", {})}
    accepted = {"attention": set(ATTENTION_IMPLS), "remat": set(REMAT_POLICIES)}
    for name_cell, _, values, _ in table[1:]:
        for name in re.findall(r"`(\w+)`", name_cell):
            assert name in hints, name
            if name in accepted:
                assert set(re.findall(r"`(\w+)`", values)) == accepted[name], name
    text = _doc("docs/accelerator.md")
    stated = re.search(r"Defaults: bf16 compute, (.*?), batch (\d+)", text)
    assert stated is not None
    assert Lm1B.compute_dtype == "bfloat16" and int(stated.group(2)) == Lm1B.batch_size
    for name, value in re.findall(r"`(\w+)=(\w+)`", stated.group(1)):
        assert str(getattr(Lm1B, name)).lower() == value.lower(), name


# Names the docs quote from elsewhere: Kubernetes' and paxml / PyGlove's own.
EXTERNAL_NAMES = {
    "AlreadyExists",
    "ExperimentParams",
    "LastReportedMetricValues",
    "MaxOfMetricValues",
    "RandomSearch",
    "RegularizedEvolution",
    "SingleObjective",
}


def test_reasons_and_names_the_docs_quote_exist_in_the_code() -> None:
    """A CamelCase name in `code` (a reason, a condition, a class) in the operator, sweep and contract docs
    is one the code uses: a renamed reason leaves no stale word behind."""
    sources = "\n".join(
        p.read_text() for d in ("operator", "contract", "trainer") for p in (REPO_ROOT / d).rglob("*.py")
    )
    quoted = {
        (doc, word)
        for doc in ("operator.md", "sweep.md", "contract.md", "trainer.md")
        for span in code_spans(REPO_ROOT / "docs" / doc)
        for word in re.findall(r"^([A-Z][a-z]+(?:[A-Z][a-z]*)+)$", span)
    }
    assert len(quoted) >= 20
    assert sorted(q for q in quoted if q[1] not in sources and q[1] not in EXTERNAL_NAMES) == []


def test_the_sample_policy_refusal_is_the_policys_message() -> None:
    """docs/security.md's `Error from server (Forbidden)` sample is made of one messageExpression's text."""
    (sample,) = [b.text for b in blocks(REPO_ROOT / "docs" / "security.md") if "Error from server" in b.text]
    sample = " ".join(sample.split())
    policy = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority.yaml").read_text())
    assert policy["metadata"]["name"] in sample
    pieces = [
        [" ".join(p.split()) for p in re.findall(r"'([^']*)'", v["messageExpression"]) if len(p.strip()) > 3]
        for v in policy["spec"]["validations"]
        if "messageExpression" in v
    ]
    assert any(all(piece.strip() in sample for piece in message) for message in pieces), sample


def test_every_image_the_samples_run_is_built_by_a_documented_command() -> None:
    """The images of deploy/samples and the docs' manifests come from a `docker build ... -t IMAGE` shown in
    the docs (or the deployment's operator image)."""
    built = set(re.findall(r"--target \w+(?: --build-arg \S+)* -t ([\w./:-]+)", " ".join(ALL_DOCS.split())))
    assert built
    images: set[str] = set()
    bodies = [m.body for m in manifests()]
    bodies += [b for p in (DEPLOY / "samples").glob("*.yaml") for b in yaml.safe_load_all(p.read_text())]
    for body in bodies:
        spec = (body or {}).get("spec") or {}
        spec = spec.get("template", spec) if body.get("kind") == "PaxSweep" else spec
        if body.get("kind") in ("PaxJob", "PaxSweep"):
            images.add(spec["image"])
    assert images and sorted(images - built) == []


def _properties(node: dict[str, Any], path: str, depth: int) -> list[str]:
    """Property paths under `node` to `depth` levels (array items looked through), PaxSweep's template left
    to the PaxJob docs."""
    if node.get("type") == "array":
        node = node.get("items", {})
    found: list[str] = []
    for key, child in node.get("properties", {}).items():
        if key == "template" and path == "spec":
            continue
        found.append(f"{path}.{key}")
        if depth > 1:
            found += _properties(child, f"{path}.{key}", depth - 1)
    return found


@pytest.mark.parametrize(("kind", "doc"), [("paxjobs", "docs/operator.md"), ("paxsweeps", "docs/sweep.md")])
def test_every_spec_and_status_field_is_documented(kind: str, doc: str) -> None:
    """Spec fields two levels deep (PaxJob's podTemplate fields are Kubernetes' own below that) and status
    fields two levels deep are named on the kind's page."""
    schema = SCHEMAS[kind]["properties"]
    text = (REPO_ROOT / doc).read_text()
    fields = _properties(schema["spec"], "spec", 2) + _properties(schema["status"], "status", 2)
    assert len(fields) >= 20
    assert sorted(f for f in fields if not re.search(rf"\b{f.rsplit('.', 1)[1]}\b", text)) == []


# --- limits ---------------------------------------------------------------------------------------------


def _find(node: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """Every schema node of property `name` under `node`."""
    found = []
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        found += _find(node["items"], name)
    for key, child in node.get("properties", {}).items():
        if key == name:
            found.append(child)
        found += _find(child, name)
    return found


def test_limits_the_docs_state_are_the_crds() -> None:
    """`gpusPerHost` ≤ 16 (operator.md), a sweep table row's "(≤ 10,000)" or "at most 16" (sweep.md)."""
    job_spec = SCHEMAS["paxjobs"]["properties"]["spec"]
    sweep_spec = SCHEMAS["paxsweeps"]["properties"]["spec"]
    checked = []
    for name, bound in re.findall(r"`(\w+)` ≤ ([\d,]+)", _doc("docs/operator.md")):
        nodes = _find(job_spec, name)
        assert nodes and all(n.get("maximum") == int(bound.replace(",", "")) for n in nodes), name
        checked.append(name)
    (table,) = [t for t in tables(REPO_ROOT / "docs" / "sweep.md") if t[0][:2] == ["Field", "Default"]]
    for field_cell, _, what in table[1:]:
        (field,) = re.findall(r"`([\w.]+)`", field_cell)
        node = _crd_node(sweep_spec, field)
        if bound := re.search(r"≤ ([\d,]+)", what):
            assert node.get("maximum") == int(bound.group(1).replace(",", "")), field
            checked.append(field)
        if count := re.match(r"(?:the search space, )?at most (\d+)", what):
            assert node.get("maxItems") == int(count.group(1)), field
            checked.append(field)
    assert len(checked) >= 5, checked


def test_paxjob_numbers_are_int32_as_the_docs_say() -> None:
    """ "seconds, steps and budgets ≤ 2147483647": every such integer of the PaxJob spec has that bound."""
    assert "seconds, steps and budgets ≤ 2147483647" in _doc("docs/operator.md")
    spec = SCHEMAS["paxjobs"]["properties"]["spec"]
    names = [p for p in _properties(spec, "spec", 3) if re.search(r"(Seconds|Steps|\.max[A-Z]\w*)$", p)]
    assert len(names) >= 6
    for path in names:
        node = _crd_node(spec, path.removeprefix("spec."))
        assert node["type"] == "integer" and 0 < node["maximum"] <= 2147483647, path


def test_every_metric_the_docs_name_exists() -> None:
    """`pax_*` names in the docs are packages, the ownership record, or metrics the code serves."""
    import pax_contract
    from pax_operator import telemetry  # noqa: F401 (registers the operator's metrics)
    from prometheus_client import REGISTRY

    served = {v for k, v in vars(pax_contract).items() if k.startswith("METRIC_") and isinstance(v, str)}
    for metric in REGISTRY.collect():
        served |= {metric.name, f"{metric.name}_total"}
    packages = {p.name for p in REPO_ROOT.glob("*/pax_*") if (p / "__init__.py").exists()}
    named = {m for doc in DOCS for span in code_spans(doc) for m in re.findall(r"\b(pax_[a-z_]+)\b", span)}
    assert len(named) >= 15
    assert sorted(named - served - packages - {"pax_owner"}) == []  # pax_owner.json: the owner record
