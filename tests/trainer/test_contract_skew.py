"""A trainer image under an operator of another contract version: another major is refused at start (exit 2,
both versions named, nothing written under job_log_dir); a flag the image does not know, rendered by a newer
operator, is a config error naming both versions too."""

from __future__ import annotations

import json
from pathlib import Path

import pax_contract as c
import pytest
from pax_contract import ContractVersion
from pax_trainer import main as trainer_main

NEXT_MAJOR = ContractVersion(c.CONTRACT_VERSION.major + 1, 0)
NEXT_MINOR = ContractVersion(c.CONTRACT_VERSION.major, c.CONTRACT_VERSION.minor + 1)


def _run(
    argv: list[str], operator: ContractVersion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict]:
    result_file = tmp_path / "result.json"
    for name in c.TRAINER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(c.ENV_RESULT_FILE, str(result_file))
    monkeypatch.setenv(c.ENV_CONTRACT_VERSION, str(operator))
    code = trainer_main.main([*argv, f"--job_log_dir={tmp_path / 'job'}"])
    return code, json.loads(result_file.read_text())


@pytest.mark.parametrize("extra", [[], ["--describe_search_space"]])
def test_another_major_is_a_config_error_naming_both_versions(
    extra: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = _run(["--exp=reverse_digits", *extra], NEXT_MAJOR, tmp_path, monkeypatch)
    assert code == c.ExitCode.CONFIG_ERROR and result["exit_reason"] == "config_error"
    assert f"operator speaks Pax contract {NEXT_MAJOR}" in result["message"]
    assert f"this trainer image speaks {c.CONTRACT_VERSION}" in result["message"]
    assert result["contract_version"] == str(c.CONTRACT_VERSION)
    assert not (tmp_path / "job").exists()
    assert "search space" not in capsys.readouterr().out  # refused before describing anything


def test_an_unknown_flag_from_a_newer_operator_names_both_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, result = _run(
        ["--exp=reverse_digits", "--flag_of_a_later_minor=1"], NEXT_MINOR, tmp_path, monkeypatch
    )
    assert code == c.ExitCode.CONFIG_ERROR
    message = result["message"]
    assert "unrecognized arguments: --flag_of_a_later_minor=1" in message
    assert f"operator speaks Pax contract {NEXT_MINOR}, this trainer image {c.CONTRACT_VERSION}" in message
