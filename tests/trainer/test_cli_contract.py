"""The trainer reads its command line and environment through the contract: one rule for override names,
one behaviour for malformed integer variables (exit 2 naming the variable), and the operator's rendered
command (after the kubelet's $(VAR) expansion) parses back to the same invocation."""

from __future__ import annotations

import json
from pathlib import Path

import pax_contract as c
import pytest
from pax_trainer import main as trainer_main

OK = ["--exp=reverse_digits"]


def _run(
    argv: list[str], env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict, str]:
    result_file = tmp_path / "result.json"
    for name in c.TRAINER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(c.ENV_RESULT_FILE, str(result_file))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = trainer_main.main([*argv, f"--job_log_dir={tmp_path / 'job'}"])
    return code, json.loads(result_file.read_text()), str(tmp_path / "job")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({c.ENV_NUM_PROCESSES: "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
        ({c.ENV_PROCESS_ID: "0x1"}, "JAX_PROCESS_ID='0x1' is not an integer"),  # was silently host 0
        ({c.ENV_RESTART_ATTEMPT: "first"}, "PAX_RESTART_ATTEMPT='first' is not an integer"),  # was 0
        ({c.ENV_METRICS_PORT: "metrics"}, "PAX_METRICS_PORT='metrics' is not an integer"),  # was a crash
        ({c.ENV_NUM_PROCESSES: "2"}, "needs JAX_COORDINATOR_ADDRESS"),
    ],
)
def test_malformed_env_is_a_config_error_naming_the_variable(
    env: dict[str, str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, result, job = _run(OK, env, tmp_path, monkeypatch)
    assert code == c.ExitCode.CONFIG_ERROR
    assert result["exit_reason"] == "config_error" and message in result["message"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == [f"pax_trainer: error: {result['message']}"]
    assert not Path(job).exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([*OK, "--set=model.num_layers=2"], "malformed override 'model.num_layers=2'"),
        ([*OK, "--set= learning_rate=1"], "malformed override"),
        ([*OK, "--ex=reverse_digits"], "bad flags"),
        (["--mode=train"], "--exp is required"),
    ],
)
def test_malformed_invocation_is_a_config_error(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, result, job = _run(argv, {}, tmp_path, monkeypatch)
    assert code == c.ExitCode.CONFIG_ERROR and message in result["message"], result
    assert not Path(job).exists()


def test_the_contract_parser_is_the_trainers() -> None:
    """The invocation's flags are the trainer's, with the same defaults; --list is the only extra."""
    contract_flags = {a.dest: a.default for a in c.build_parser()._actions}
    trainer_flags = {a.dest: a.default for a in trainer_main.build_parser()._actions}
    assert trainer_flags == contract_flags | {"list": False}
