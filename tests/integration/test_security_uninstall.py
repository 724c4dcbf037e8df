"""Removing a kustomize install (`kubectl delete -k deploy`) deletes the CRDs, and with them every PaxJob and
PaxSweep in every namespace (the garbage collector then deletes their pods: running trainings end). The
CRDs carry `app.kubernetes.io/component: crd`, so the documented removal that keeps them is
`kubectl delete -k deploy -l app.kubernetes.io/component!=crd` (docs/install.md); checked here with the real
kubectl against the real apiserver, as a client-side dry run (the shared control plane keeps its objects)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pax_cluster.procs import DEPLOY

pytestmark = pytest.mark.integration

CRDS = {"customresourcedefinition.apiextensions.k8s.io/paxjobs.pax.dev",
        "customresourcedefinition.apiextensions.k8s.io/paxsweeps.pax.dev"}  # fmt: skip


def _would_delete(kubectl, *selector: str) -> set[str]:
    r = kubectl("delete", "-k", str(DEPLOY), "--dry-run=client", "-o", "name", *selector)
    assert r.returncode == 0, r.stderr
    return set(r.stdout.split())


def test_removing_the_kustomize_install_can_keep_every_paxjob(kubectl, pax_installed: Path) -> None:
    everything = _would_delete(kubectl)
    assert everything >= CRDS  # the plain removal takes every PaxJob and PaxSweep with it
    kept = _would_delete(kubectl, "-l", "app.kubernetes.io/component!=crd")
    assert kept == everything - CRDS, kept ^ (everything - CRDS)
    for operator_object in (
        "deployment.apps/pax-operator",
        "clusterrole.rbac.authorization.k8s.io/pax-operator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/pax-paxjob-pod-authority",
        "namespace/pax-system",
    ):
        assert operator_object in kept, sorted(kept)
