"""Every PaxJob and PaxSweep a doc shows (README.md, docs/*.md yaml blocks, examples/) is what the real
apiserver with deploy/'s CRDs admits (server-side dry run) — or refuses, when the doc marks the block as a
rejected example (```yaml rejected); every `helm install` / `helm upgrade` they show renders with the real
helm. deploy/samples are dry-run by test_paxjob_admission.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from pax_cluster.binaries import BinariesNotFoundError, find_binaries
from pax_cluster.procs import REPO_ROOT

from tests.docs_snippets import Manifest, all_blocks, manifests

pytestmark = pytest.mark.integration

DOC_MANIFESTS = manifests()
UPGRADE_ONLY = ("--reuse-values", "--reset-values", "--reset-then-reuse-values")  # not `helm template`'s


def test_the_docs_show_manifests() -> None:
    assert {m.kind for m in DOC_MANIFESTS} == {"PaxJob", "PaxSweep"}


@pytest.mark.parametrize("manifest", DOC_MANIFESTS, ids=lambda m: m.where)
def test_doc_manifest_admission(manifest: Manifest, kubectl, pax_installed: Path, namespace: str) -> None:
    body = json.dumps(manifest.body)
    result = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=body, timeout=60)
    if manifest.rejected:
        assert result.returncode != 0, f"{manifest.where} is shown as rejected, yet admitted"
    else:
        assert result.returncode == 0, f"{manifest.where}: {result.stderr.strip()}"


def _helm_commands() -> list[tuple[str, list[str]]]:
    """Each `$ helm install|upgrade ...` a doc's console block shows, continuation lines joined."""
    found = []
    for block in all_blocks():
        for line in block.text.replace("\\\n", " ").splitlines():
            if line.startswith("$ helm install ") or line.startswith("$ helm upgrade "):
                found.append((block.where, shlex.split(line[2:].split(" # ")[0])))
    return found


@pytest.mark.parametrize(("where", "argv"), _helm_commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_doc_helm_commands_render(where: str, argv: list[str], tmp_path: Path) -> None:
    """As `helm template` with the same release, chart, namespace and --set values (an upgrade's own flags,
    checked against `helm upgrade --help`, dropped): the chart's schema and templates accept what the docs
    tell users to pass."""
    try:
        helm = str(find_binaries().require_helm())
    except BinariesNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    _, verb, release, chart, *flags = argv
    env = {**os.environ, **{f"HELM_{d}_HOME": str(tmp_path / d) for d in ("CACHE", "CONFIG", "DATA")}}
    upgrade_only = [f for f in flags if f in UPGRADE_ONLY]
    if upgrade_only:
        usage = subprocess.run([helm, verb, "--help"], capture_output=True, text=True, timeout=60, env=env)
        assert verb == "upgrade" and all(f in usage.stdout for f in upgrade_only), (where, upgrade_only)
    flags = [f for f in flags if f not in UPGRADE_ONLY]
    rendered = subprocess.run(
        [helm, "template", release, str(REPO_ROOT / chart), *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert rendered.returncode == 0, f"{where}: helm {' '.join(argv)}: {rendered.stderr.strip()}"
