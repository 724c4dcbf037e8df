"""Success: every host of the current gang ended without an abnormal outcome."""

from __future__ import annotations

from pax_operator.core.policies.context import Pass, finish
from pax_operator.spec import Phase


def success(p: Pass) -> bool:
    if not p.outcomes or any(outcome is None for outcome in p.outcomes.values()):
        return False
    message = p.status.progress.message or f"all {p.hosts} hosts completed"
    finish(p, Phase.SUCCEEDED, "Completed", message)
    return True
