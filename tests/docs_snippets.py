"""What the user-facing docs show, read the way a user copies it: fenced and indented code blocks, inline
code spans, Markdown tables, and the PaxJob / PaxSweep manifests among them (plus examples/).

Used by tests/unit/test_docs_*.py (against the CRDs, models, Makefile, parsers) and
tests/integration/test_docs_examples.py (against the real apiserver)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pax_cluster.procs import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
EXAMPLES = REPO_ROOT / "examples"
PAX_KINDS = ("PaxJob", "PaxSweep")
# Shown on purpose as refused: a fenced block whose info string carries this word is not expected to pass.
REJECTED_MARK = "rejected"


@dataclass(frozen=True)
class Block:
    """One code block of a doc: its info string (`yaml`, `console`, `` for an indented block) and text."""

    path: Path
    line: int
    info: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)```([^`\n]*)$")


def blocks(path: Path) -> list[Block]:
    """Fenced blocks, and blocks indented by 4 spaces after a blank line (outside fences and lists)."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence:
            start, body = i, []
            i += 1
            while i < len(lines) and not _FENCE.match(lines[i]):
                body.append(lines[i])
                i += 1
            found.append(Block(path, start + 1, fence.group(2).strip(), "\n".join(body)))
            i += 1
            continue
        if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            found.append(Block(path, start + 1, "", "\n".join(body).rstrip()))
            continue
        i += 1
    return found


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in blocks(path)]


def code_spans(path: Path) -> list[str]:
    """Inline `code` of the prose (fenced blocks left out)."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return re.findall(r"`([^`\n]+)`", text)


def code_texts(path: Path) -> list[str]:
    """Everything shown as code in one doc: blocks and inline spans."""
    return [b.text for b in blocks(path)] + code_spans(path)


def tables(path: Path) -> list[list[list[str]]]:
    """Markdown tables as rows of cells (header first, the |---| line dropped)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*path.read_text().splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


@dataclass(frozen=True)
class Manifest:
    """A PaxJob or PaxSweep a user can copy: from a doc's yaml block or a file under examples/."""

    where: str
    body: dict[str, Any]
    rejected: bool  # shown on purpose as an example the apiserver refuses

    @property
    def kind(self) -> str:
        return str(self.body["kind"])


def manifests() -> list[Manifest]:
    found: list[Manifest] = []
    for block in all_blocks():
        if not block.info.startswith("yaml"):
            continue
        for body in yaml.safe_load_all(block.text):
            if isinstance(body, dict) and body.get("kind") in PAX_KINDS:
                found.append(Manifest(block.where, body, REJECTED_MARK in block.info))
    for path in sorted(EXAMPLES.rglob("*.yaml")) if EXAMPLES.is_dir() else []:
        for body in yaml.safe_load_all(path.read_text()):
            if isinstance(body, dict) and body.get("kind") in PAX_KINDS:
                found.append(Manifest(str(path.relative_to(REPO_ROOT)), body, rejected=False))
    return found


def cli_options(run: Callable[[], object]) -> dict[str, argparse.Action]:
    """The options of the argparse parser that `run()` builds, by option string: its parse_args is caught,
    so nothing runs (sys.argv is a bare program name meanwhile)."""
    captured: dict[str, argparse.Action] = {}

    def capture(parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        captured.update({option: action for action in parser._actions for option in action.option_strings})
        raise SystemExit(0)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        patch.setattr("sys.argv", ["prog"])
        with pytest.raises(SystemExit):
            run()
    return captured
