"""The process kubelet's $(VAR) expansion against the real kubelet's: Go's expansion grammar
(k8s third_party/forked/golang/expansion), and a table holding the container's own env only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pax_cluster.kubelet.runner import PodRunner
from pax_cluster.kubelet.volumes import PodVolumes
from pax_cluster.podenv import expand, resolve_env
from pax_operator.core.render import kubelet_escape

# The context of expand_test.go's doExpansionTest.
GO_ENV = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(VAR_A)", "A"),
        ("$(VAR_A)-$(VAR_A)", "A-A"),
        ("___$(VAR_B)___", "___B___"),
        ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
        ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
        ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
        ("f000-$$VAR_A", "f000-$VAR_A"),
        ("foo\\$(VAR_C)bar", "foo\\Cbar"),
        ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
        ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
        ("$(VAR_REF)", "$(VAR_A)"),
        ("foo$(VAR_EMPTY)bar", "foobar"),
        ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"),
        ("$?_boo_$!", "$?_boo_$!"),
        ("$VAR_A", "$VAR_A"),
        ("$(VAR_DNE)", "$(VAR_DNE)"),
        ("$$$$$$(BIG_MONEY)", "$$$(BIG_MONEY)"),
        ("$$$$$$(VAR_A)", "$$$(VAR_A)"),
        ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"),
        ("$$$$$$$(VAR_A)", "$$$A"),
        ("$VAR_A)", "$VAR_A)"),
        ("${VAR_A}", "${VAR_A}"),
        ("$(VAR_B)_______$(A", "B_______$(A"),
        ("$(VAR_C)_______$(", "C_______$("),
        ("$(VAR_A)foobarzab$", "Afoobarzab$"),
        ("--$($($($($--", "--$($($($($--"),
        ("$($($($($--foo$(", "$($($($($--foo$("),
        ("$(foo$$var)", "$(foo$$var)"),
        ("$$VAR_A)$(VAR_B)", "$VAR_A)B"),  # the `$` after `$` is consumed, not re-read
        ("$é$(VAR_A)", "$éA"),  # Go reads a rune, not a byte, after a lone `$`
        ("$()", "$()"),
        ("\n", "\n"),
        ("", ""),
    ],
)
def test_go_expansion_cases(text: str, want: str) -> None:
    assert expand(text, GO_ENV) == want


def test_name_is_anything_up_to_the_first_close_paren() -> None:
    """Go's names are not identifiers: whatever lies between `$(` and the first `)`."""
    env = {".x": "dot", "A$(B": "odd", "B": "vb", "a b": "space"}
    assert expand("$(.x)", env) == "dot"
    assert expand("$(A$(B))", env) == "odd)"
    assert expand("$(a b)", env) == "space"
    assert expand("$(A$(B))", {"B": "vb"}) == "$(A$(B))"


names = st.text(alphabet=st.characters(blacklist_characters=")"), max_size=6)


@given(st.text(max_size=40), st.dictionaries(names, st.text(max_size=10), max_size=4))
def test_escaped_text_comes_back_verbatim(text: str, env: dict[str, str]) -> None:
    """Whatever the operator escapes reaches the process unchanged, whatever the env defines."""
    assert expand(kubelet_escape(text), env) == text


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=40))
def test_text_without_operator_is_untouched(text: str) -> None:
    assert expand(text, {"A": "1"}) == text


def no_lookup(kind: str, name: str, key: str, optional: bool) -> str | None:
    raise AssertionError(f"unexpected lookup {kind} {name} {key}")


POD: dict[str, Any] = {
    "metadata": {"name": "job-0", "namespace": "ns", "uid": "u-1"},
    "spec": {"nodeName": "pax-local", "containers": []},
    "status": {"podIP": "127.10.0.1"},
}


def test_env_sees_only_earlier_container_env() -> None:
    container = {
        "env": [
            {"name": "P", "value": "$(PATH):$(A)"},
            {"name": "A", "value": "a"},
            {"name": "B", "value": "$(A)-$(HOME)"},
            {"name": "EMPTY"},  # the apiserver drops `value: ""`: an empty variable, as in a kubelet
            {"name": "C", "value": "[$(EMPTY)]"},
        ]
    }
    assert resolve_env(POD, container, no_lookup) == {
        "P": "$(PATH):$(A)",
        "A": "a",
        "B": "a-$(HOME)",
        "EMPTY": "",
        "C": "[]",
    }


class FakeHost:
    """What `PodRunner._plan` reads from its kubelet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts_file = root / "hosts"

    def lookup(self, namespace: str, kind: str, name: str, key: str, optional: bool) -> str | None:
        return '{"FROM_CM": "$(PATH)"}' if kind == "configMapRef" else None

    def base_env(self) -> dict[str, str]:
        return {"PATH": "/venv/bin:/usr/bin", "HOME": "/tmp", "STORAGE_EMULATOR_HOST": "http://gcs"}

    def image_paths(self) -> list[Path]:
        return []

    def working_dir(self) -> Path:
        return self.root


def test_plan_expands_against_container_env_only(tmp_path: Path) -> None:
    """Image ENV (PATH, HOME, image_env) is in the process's env but not in the $(VAR) table: a real
    kubelet leaves `$(PATH)` as written, so the process kubelet must too."""
    container = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "cm"}}],
        "env": [
            {"name": "HOME", "value": "/home/user"},
            {"name": "WHERE", "value": "$(PATH)|$(STORAGE_EMULATOR_HOST)|$(HOME)"},
        ],
        "command": ["echo", "$(PATH)", "$(HOME)"],
        "args": ["$(WHERE)", "$(FROM_CM)", "$(STORAGE_EMULATOR_HOST)"],
    }
    pod = {**POD, "spec": {**POD["spec"], "containers": [container]}}
    runner = PodRunner(host=FakeHost(tmp_path), pod=pod, ip="127.10.0.1")  # type: ignore[arg-type]
    plan = runner._plan(container, PodVolumes(pod, tmp_path, None))  # type: ignore[arg-type]
    literal = "$(PATH)|$(STORAGE_EMULATOR_HOST)|/home/user"
    assert plan.argv[-6:] == ["echo", "$(PATH)", "/home/user", literal, "$(PATH)", "$(STORAGE_EMULATOR_HOST)"]
    assert plan.env == {
        "PATH": "/venv/bin:/usr/bin",
        "HOME": "/home/user",
        "STORAGE_EMULATOR_HOST": "http://gcs",
        "FROM_CM": "$(PATH)",
        "WHERE": literal,
    }
