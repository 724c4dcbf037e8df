"""PAX_TERMINATION_GRACE_SECONDS: how it is read, and how much of it the trainer may wait for a save."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pax_contract import ENV_TERMINATION_GRACE, EnvError, TrainerEnv
from pax_trainer.errors import Preempted
from pax_trainer.preemption import GRACE_MARGIN_MIN_S, stop_budget_s


@pytest.mark.parametrize(("text", "seconds"), [(None, None), ("", None), ("  ", None), ("30", 30), ("0", 0)])
def test_the_grace_period_is_read_whole_seconds_and_absent_means_not_told(
    text: str | None, seconds: int | None
) -> None:
    env = {} if text is None else {ENV_TERMINATION_GRACE: text}
    parsed = TrainerEnv.from_env(env)
    assert parsed.termination_grace_s == seconds
    assert TrainerEnv.from_env(parsed.to_env()) == parsed


@pytest.mark.parametrize("text", ["soon", "30s", "1.5", "-1", "0x1e"])
def test_a_malformed_or_negative_grace_period_is_an_error_naming_the_variable(text: str) -> None:
    with pytest.raises(EnvError, match=ENV_TERMINATION_GRACE):
        TrainerEnv.from_env({ENV_TERMINATION_GRACE: text})


@pytest.mark.parametrize(("grace", "budget"), [(0, 0.0), (1, 0.0), (5, 3.0), (30, 24.0), (120, 110.0)])
def test_the_budget_keeps_a_margin_for_the_result_and_the_exit(grace: int, budget: float) -> None:
    assert stop_budget_s(grace) == budget


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_the_budget_ends_before_the_grace_period_and_grows_with_it(a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert 0 <= stop_budget_s(low) <= stop_budget_s(high)
    assert stop_budget_s(high) <= max(0.0, high - GRACE_MARGIN_MIN_S)


def test_the_grace_exit_says_the_save_is_not_committed_and_where_the_job_resumes() -> None:
    err = Preempted(50, saved=False, grace_s=30)
    assert err.step == 50 and int(err.exit_code) == 42
    assert "grace period (30 s)" in str(err) and "the last checkpoint is step 50" in str(err)
    assert "no committed checkpoint known" in str(Preempted(None, saved=False, grace_s=30))
