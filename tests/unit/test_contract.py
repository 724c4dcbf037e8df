"""The contract module and docs/contract.md say the same thing, and the result JSON round-trips."""

import re
from pathlib import Path

import pax_contract as c
import pytest

DOC = (Path(__file__).parents[2] / "docs" / "contract.md").read_text()


@pytest.mark.parametrize(
    "name",
    [
        c.ENV_COORDINATOR_ADDRESS,
        c.ENV_NUM_PROCESSES,
        c.ENV_PROCESS_ID,
        c.ENV_RESTART_ATTEMPT,
        c.ENV_RESULT_FILE,
        c.ENV_METRICS_PORT,
        c.ENV_JOB_NAME,
        c.ENV_POD_IP,
        c.METRIC_STEP,
        c.METRIC_CHECKPOINT_STEP,
        c.METRIC_LOSS,
        c.METRIC_STEPS_PER_SEC,
        c.METRIC_TOTAL_STEPS,
        c.METRIC_EVAL_STEP,
        c.METRIC_EVAL,
        c.COMMIT_MARKER,
    ],
)
def test_every_name_is_documented(name: str) -> None:
    assert f"`{name}`" in DOC or name in DOC


def test_documented_exit_codes_match_the_enum() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([a-z]+)", DOC, flags=re.M))
    assert {int(k) for k in table} == {int(code) for code in c.ExitCode}
    assert str(c.COORDINATOR_PORT) in DOC and str(c.METRICS_PORT) in DOC


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (0, c.Outcome.SUCCEEDED),
        (1, c.Outcome.FAILED),
        (2, c.Outcome.PERMANENT),
        (3, c.Outcome.FAILED),
        (42, c.Outcome.PREEMPTED),
        (137, c.Outcome.PREEMPTED),
        (143, c.Outcome.PREEMPTED),
        (139, c.Outcome.FAILED),
    ],
)
def test_classify_exit_code(code: int, outcome: c.Outcome) -> None:
    assert c.classify_exit_code(code) is outcome


def test_every_exit_reason_has_a_code() -> None:
    assert set(c.EXIT_CODE_FOR_REASON) == set(c.ExitReason)


def test_result_round_trip() -> None:
    result = c.TrainerResult(
        c.ExitReason.PREEMPTED, final_step=17, last_checkpoint_step=17, metrics={"loss": 1.5}, attempt=2
    )
    assert c.TrainerResult.from_json(result.to_json()) == result


def test_result_fits_the_termination_message_limit() -> None:
    result = c.TrainerResult(
        c.ExitReason.CRASHED,
        metrics={f"metric_{i:04d}": float(i) for i in range(500)},
        message="x" * 10_000,
    )
    text = result.to_json()
    assert len(text.encode()) <= c.TERMINATION_MESSAGE_MAX_BYTES
    parsed = c.TrainerResult.from_json(text)
    assert parsed.metrics == {} and parsed.message.endswith("...")


@pytest.mark.parametrize("text", ["", "not json", "{}", '{"exit_reason": "bogus"}', "[1, 2]"])
def test_garbage_is_not_a_result(text: str) -> None:
    with pytest.raises(ValueError, match="not a Pax trainer result"):
        c.TrainerResult.from_json(text)


def test_checkpoint_dir_name_is_paxml_style() -> None:
    assert c.checkpoint_dir_name(100) == "checkpoint_00000100"
