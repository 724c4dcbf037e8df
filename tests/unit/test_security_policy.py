"""deploy/policy's per-reference slots: one validation per slot 0..N-1, each checking only its own reference,
and the cap refusing more than N, so that no reference goes unchecked (a gap or a cap above the slots would
admit the references beyond them without any check)."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml
from pax_cluster.procs import DEPLOY, REPO_ROOT

POLICY = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority.yaml").read_text())


def test_every_reference_below_the_cap_has_its_own_check() -> None:
    expressions = [" ".join(v["expression"].split()) for v in POLICY["spec"]["validations"]]
    slots = [e for e in expressions if "variables.checkable[" in e]
    indices = [int(i) for e in slots for i in set(re.findall(r"variables\.checkable\[(\d+)\]", e))]
    assert indices == list(range(len(slots))), indices  # one index per slot, contiguous from 0
    for index, slot in zip(indices, slots, strict=True):
        assert slot.startswith(
            f"size(variables.checkable) <= {index} || variables.mayCreatePods || authorizer"
        )
        assert slot.endswith(f".check(variables.checkable[{index}].verb).allowed()"), slot
    (cap,) = [
        e for e in expressions if e.startswith("size(variables.checkable) <=") and "authorizer" not in e
    ]
    assert cap == f"size(variables.checkable) <= {len(slots)} || variables.mayCreatePods"


def test_generated_slots_are_fresh() -> None:
    """The slots are written once, in hack/gen-policy.py: fails when the policy was edited by hand there."""
    check = [sys.executable, str(REPO_ROOT / "hack" / "gen-policy.py"), "--check"]
    result = subprocess.run(check, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
