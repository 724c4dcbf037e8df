"""Every command the docs show exists as written: make targets, the trainer's and the operator's flags (and
the defaults the docs state for them), the benchmark's flags, kubectl resource names and the helm values
keys and defaults. No cluster: the parsers, the Makefile, the CRDs and values.yaml are the references."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml
from pax_cluster.procs import DEPLOY, REPO_ROOT

from tests.docs_snippets import DOCS, cli_options, code_texts, tables

CHART = REPO_ROOT / "charts" / "pax-operator"
CRDS = [yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "crds").glob("*.yaml"))]


def _doc(name: str) -> Path:
    return REPO_ROOT / name


def _code(paths: list[Path] = DOCS) -> list[tuple[Path, str]]:
    return [(path, text) for path in paths for text in code_texts(path)]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


def _flags_after(command: str, texts: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """The --flags of each shell line that runs `command` (continuation lines joined, comments cut)."""
    found: list[tuple[Path, str]] = []
    for path, text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0]
            match = re.search(rf"(?:^|[\s$=/]){re.escape(command)}(?=\s|$)(.*)", line)
            if match:
                found += [(path, flag) for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", match.group(1))]
    return found


# --- make -------------------------------------------------------------------------------------------


def _make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):(?!=)", text, flags=re.M))


def test_every_make_target_in_the_docs_exists() -> None:
    named = {
        (path.name, target)
        for path, text in _code()
        for target in re.findall(r"(?:^|[\s(;&])make ([a-z][\w-]*)", text, flags=re.M)
    }
    assert named, "no `make X` found: the pattern no longer matches the docs"
    assert sorted(n for n in named if n[1] not in _make_targets()) == []


def test_every_user_target_is_documented() -> None:
    """A target in `make help` is one a user runs: the README or a doc names it."""
    help_text = re.search(r"^help:\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), flags=re.M)
    assert help_text is not None
    helped = set(re.findall(r"make ([a-z][\w-]*)", help_text.group(1)))
    helped |= set(re.findall(r"/ ([a-z][\w-]*) -", help_text.group(1)))  # "cluster-status / cluster-down"
    documented = "\n".join(path.read_text() for path in DOCS)
    assert sorted(t for t in helped if f"make {t}" not in documented) == []


# --- the trainer ------------------------------------------------------------------------------------


def test_trainer_flags_in_the_docs_exist() -> None:
    from pax_trainer.main import build_parser

    options = _options(build_parser())
    flags = _flags_after("python -m pax_trainer", _code()) + _flags_after("pax-trainer", _code())
    assert {flag for _, flag in flags} >= {"--exp", "--mode", "--job_log_dir", "--set"}
    assert sorted({f"{p.name}: {f}" for p, f in flags if f not in options}) == []


def test_trainer_flags_are_documented() -> None:
    from pax_trainer.main import build_parser

    documented = {flag for _, flag in _flags_after("python -m pax_trainer", _code())}
    documented |= {
        span for path, span in _code([_doc("docs/trainer.md"), _doc("docs/contract.md")]) if span[:2] == "--"
    }
    options = {o for o in _options(build_parser()) if o.startswith("--") and o != "--help"}
    assert sorted(options - documented) == []


def test_benchmark_flags_in_the_docs_exist() -> None:
    from pax_trainer import bench, bench_accelerator
    from pax_trainer.main import build_parser

    accelerator = set(cli_options(lambda: bench_accelerator.main([])))
    plain = set(cli_options(bench.main))
    texts = _code([_doc("docs/accelerator.md"), _doc("docs/trainer.md")])
    run = {flag for _, flag in _flags_after("run-bench.sh", texts)}
    run |= {
        f for _, text in texts for args in re.findall(r'BENCH_ARGS="([^"]*)"', text) for f in args.split()
    }
    run = {flag for flag in run if flag.startswith("--")}
    assert run >= {"--variant", "--time_budget_s"}, run
    assert sorted(run - accelerator) == []
    spans = {m.group(1) for _, t in texts if (m := re.fullmatch(r"(--[a-z]\w*)(?:[= ]\S*)?", t))}
    known = accelerator | plain | set(_options(build_parser())) | {"--accelerator"}
    assert sorted(s for s in spans - known if not s.startswith("--xla_")) == []


# --- the operator -----------------------------------------------------------------------------------


def _operator_options() -> dict[str, argparse.Action]:
    from pax_operator.main import parse_args

    return cli_options(lambda: parse_args([]))


def test_operator_flags_in_the_docs_exist() -> None:
    """docs/operator.md's flags are the operator's (or the trainer's, in the spec table)."""
    from pax_trainer.main import build_parser

    options = _operator_options()
    spans = [
        span.split("=")[0]
        for _, span in _code([_doc("docs/operator.md")])
        if re.fullmatch(r"--[a-z][a-z_-]*(=\S*)?", span)
    ]
    spans += [flag for _, flag in _flags_after("python -m pax_operator", _code())]
    assert len(set(spans) & set(options)) >= 10, spans
    assert sorted(set(spans) - set(options) - set(_options(build_parser()))) == []


def test_every_operator_flag_is_documented() -> None:
    text = _doc("docs/operator.md").read_text()
    flags = {f for f in _operator_options() if f.startswith("--") and f != "--help"}
    assert len(flags) >= 10
    assert sorted(f for f in flags if not re.search(rf"`{f}\b", text)) == []


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_operator_defaults_the_docs_state() -> None:
    """`every 10 s (`--scrape-interval`)`, `(`--workers`) (16)`, `--kube-qps` 1000, `--retry-period` (2 s)."""
    options = _operator_options()
    text = " ".join(_doc("docs/operator.md").read_text().split())
    stated = re.findall(r"(\d[\d,]*(?:\.\d+)?)(?: s|/s)? \(`(--[a-z-]+)`\)", text)
    stated += [(n, f) for f, n in re.findall(r"`(--[a-z-]+)`,? \(?(\d[\d,]*(?:\.\d+)?)(?: s)?\)?", text)]
    assert len({flag for _, flag in stated}) >= 8, stated
    wrong = sorted(
        f"{flag}: docs {number}, code {options[flag].default}"
        for number, flag in stated
        if flag in options and _number(number) != float(options[flag].default)
    )
    assert wrong == []


# --- kubectl ----------------------------------------------------------------------------------------


def _resource_names() -> set[str]:
    names: set[str] = set()
    for crd in CRDS:
        n = crd["spec"]["names"]
        names |= {n["plural"], n["singular"], n["kind"].lower(), *n["shortNames"], crd["metadata"]["name"]}
    return names


def _schema(resource: str) -> dict[str, Any]:
    for crd in CRDS:
        n = crd["spec"]["names"]
        if resource in {n["plural"], n["singular"], *n["shortNames"]}:
            return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise KeyError(resource)


def test_kubectl_resources_and_explain_paths_exist() -> None:
    ours = _resource_names()
    categories = {c for crd in CRDS for c in crd["spec"]["names"]["categories"]}
    seen = []
    for path, text in _code():
        for verb, resource in re.findall(
            r"kubectl (get|describe|explain|delete crd|edit|patch) ([\w.-]+)", text
        ):
            if verb == "explain":
                kind, *fields = resource.split(".")
                node = _schema(kind)
                for field in fields:
                    assert field in node.get("properties", {}), f"{path.name}: kubectl explain {resource}"
                    node = node["properties"][field]
            elif verb == "delete crd":
                assert resource in {c["metadata"]["name"] for c in CRDS}, f"{path.name}: {resource}"
            elif resource.startswith("p") and resource not in {"pods", "pod", "pvc"}:
                assert resource in ours | categories, f"{path.name}: kubectl {verb} {resource}"
            seen.append(resource)
    assert {"pj", "psw"} <= set(seen)


def _printer_columns(resource: str, wide: bool) -> list[str]:
    for crd in CRDS:
        if resource in crd["spec"]["names"]["shortNames"]:
            columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            return ["NAME"] + [c["name"].upper() for c in columns if wide or not c.get("priority")]
    raise KeyError(resource)


def test_shown_kubectl_get_output_has_the_crd_columns() -> None:
    """The `$ kubectl get pj` transcript in docs/operator.md prints what the CRD's printer columns print."""
    shown = 0
    for path, text in _code():
        for resource, header in re.findall(r"^\$ kubectl get (\w+)\n(NAME .*)$", text, flags=re.M):
            assert header.split() == _printer_columns(resource, wide=False), path.name
            shown += 1
    assert shown >= 1


def test_what_kubectl_get_is_said_to_show_is_a_column() -> None:
    """`kubectl get pj -w   # phase, step, ...` names only columns `kubectl get` prints without -o wide."""
    for path, text in _code():
        for resource, comment in re.findall(r"kubectl get (pj|psw) -w\s+# (.*)", text):
            columns = {c.lower() for c in _printer_columns(resource, wide=False)}
            plain = re.split(r"[;(]", comment)[0]  # what follows names `-o wide` columns
            said = {word.strip().lower() for word in re.split(r",| and ", plain) if word.strip()}
            assert said <= columns, f"{path.name}: {comment!r} vs {sorted(columns)}"


# --- helm -------------------------------------------------------------------------------------------


def _values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _lookup(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, dotted
        node = node[part]
    return node


def _values_table() -> list[list[str]]:
    (table,) = [t for t in tables(_doc("docs/install.md")) if t[0][:2] == ["Value", "Default"]]
    return table[1:]


def test_helm_set_keys_exist() -> None:
    helm = [line for _, text in _code() for line in text.replace("\\\n", " ").splitlines() if "helm " in line]
    keys = [key for line in helm for key in re.findall(r"--set '?([\w.]+)=", line)]
    assert len(keys) >= 3
    values = _values()
    for key in keys:
        _lookup(values, key)


def test_helm_values_table_names_real_keys_with_their_defaults() -> None:
    values = _values()
    literal = {"`[]`": [], "`{}`": {}, '`""`': "", "`true`": True, "`false`": False}
    for row in _values_table():
        keys = re.findall(r"`([\w.]+)`", row[0])
        assert keys, row
        for key in keys:
            value = _lookup(values, key)
            first = row[1].split(" ")[0]
            if first in literal:
                assert value == literal[first], (key, row[1])
            elif re.fullmatch(r"`[\w./-]+`", first):
                assert str(value) == first.strip("`"), (key, row[1])


def test_every_helm_value_is_in_the_table() -> None:
    documented = {key for row in _values_table() for key in re.findall(r"`([\w.]+)`", row[0])}

    def covered(key: str) -> bool:
        return any(key == d or key.startswith(d + ".") for d in documented)

    def leaves(node: dict[str, Any], prefix: str = "") -> list[str]:
        out: list[str] = []
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and not covered(path):
                out += leaves(value, path + ".")
            else:
                out.append(path)
        return out

    assert sorted(k for k in leaves(_values()) if not covered(k)) == []
