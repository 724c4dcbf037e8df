"""Every PaxJob and PaxSweep a doc shows (README.md, docs/*.md yaml blocks, examples/) is what the real
apiserver with deploy/'s CRDs admits (server-side dry run) — or refuses, when the doc marks the block as a
rejected example (```yaml rejected). deploy/samples are dry-run by test_paxjob_admission.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.docs_snippets import Manifest, manifests

DOC_MANIFESTS = manifests()


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
