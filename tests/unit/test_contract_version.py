"""The contract's version: each version's surface is recorded here, so changing the contract without
raising CONTRACT_VERSION fails; a minor only adds; an operator and a trainer image of one major work together
whichever is newer, and another major is refused with both versions named."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import pax_contract as c
import pytest
from pax_contract import ContractVersion, layout


@dataclass(frozen=True)
class Surface:
    """What both sides agree on, by name: what a version change is about."""

    env: frozenset[str]
    flags: frozenset[str]
    result_fields: frozenset[str]
    exit_codes: frozenset[tuple[int, str | None]]
    metrics: frozenset[str]  # the gauges the operator scrapes (a renamed step gauge reads as a hang)
    layout: frozenset[str]  # names under job_log_dir (a renamed checkpoint is not resumed from)
    overrides: frozenset[str]  # hyperparameters the operator sets (checkpointIntervalSteps)

    def __le__(self, other: Surface) -> bool:
        return all(getattr(self, f.name) <= getattr(other, f.name) for f in dataclasses.fields(self))


V1_0 = Surface(  # the contract before it had a version
    env=frozenset(
        {
            "POD_IP",
            "JAX_COORDINATOR_ADDRESS",
            "JAX_NUM_PROCESSES",
            "JAX_PROCESS_ID",
            "PAX_RESTART_ATTEMPT",
            "PAX_RESULT_FILE",
            "PAX_METRICS_PORT",
            "PAX_JOB_NAME",
            "PAX_JOB_NAMESPACE",
            "MEGASCALE_COORDINATOR_ADDRESS",
            "MEGASCALE_NUM_SLICES",
            "MEGASCALE_SLICE_ID",
            "MEGASCALE_PORT",
        }
    ),
    flags=frozenset(
        {
            "--exp",
            "--mode",
            "--job_log_dir",
            "--set",
            "--overrides_json",
            "--dna_json",
            "--describe_search_space",
        }
    ),
    result_fields=frozenset(
        {"exit_reason", "final_step", "last_checkpoint_step", "metrics", "message", "attempt"}
    ),
    exit_codes=frozenset(
        {
            (0, "completed"),
            (1, "crashed"),
            (2, "config_error"),
            (3, "storage_error"),
            (42, "preempted"),
            (137, None),
            (143, None),
        }
    ),
    metrics=frozenset(
        {
            "pax_train_step",
            "pax_last_checkpoint_step",
            "pax_train_loss",
            "pax_steps_per_second",
            "pax_num_train_steps",
            "pax_eval_step",
            "pax_eval_metric",
            "metric",  # its label
        }
    ),
    layout=frozenset(
        {"checkpoints", "checkpoint", "checkpoint_00000100", "commit_success.txt", "summaries", "decoder_out"}
    ),
    overrides=frozenset({"save_interval_steps"}),
)
V1_1 = dataclasses.replace(  # the version itself: PAX_CONTRACT_VERSION and the result's contract_version;
    V1_0,  # and PAX_TERMINATION_GRACE_SECONDS (unset: the trainer waits as 1.0 did)
    env=V1_0.env | {"PAX_CONTRACT_VERSION", "PAX_TERMINATION_GRACE_SECONDS"},
    result_fields=V1_0.result_fields | {"contract_version"},
)
SURFACES = {ContractVersion(1, 0): V1_0, ContractVersion(1, 1): V1_1}


def _layout_constants() -> list[tuple[str, str]]:
    return [
        (name, value) for name, value in vars(layout).items() if name.isupper() and isinstance(value, str)
    ]


def current_surface() -> Surface:
    return Surface(
        env=frozenset(c.TRAINER_ENV),
        flags=frozenset(option for action in c.build_parser()._actions for option in action.option_strings)
        - {"-h", "--help"},
        result_fields=frozenset(f.name for f in dataclasses.fields(c.TrainerResult)),
        exit_codes=frozenset((int(code), code.reason and str(code.reason)) for code in c.ExitCode),
        metrics=frozenset(value for name, value in _layout_constants() if name.startswith("METRIC_")),
        layout=frozenset(value for name, value in _layout_constants() if not name.startswith("METRIC_"))
        | {c.checkpoint_dir_name(100)},
        overrides=frozenset(c.OPERATOR_OVERRIDES),
    )


def test_the_contract_is_the_surface_recorded_for_its_version() -> None:
    """Changed the contract? Raise CONTRACT_VERSION (docs/contract.md: a minor adds, a major changes) and
    record the new version's surface in SURFACES."""
    assert c.CONTRACT_VERSION in SURFACES, f"record the surface of contract {c.CONTRACT_VERSION}"
    assert current_surface() == SURFACES[c.CONTRACT_VERSION]
    assert max(SURFACES) == c.CONTRACT_VERSION and min(SURFACES) == c.UNVERSIONED


def test_a_minor_version_only_adds() -> None:
    versions = sorted(SURFACES)
    for older, newer in itertools.pairwise(versions):
        if older.major == newer.major:
            assert SURFACES[older] <= SURFACES[newer], f"{newer} removes something {older} had: a new major"


def test_what_a_minor_added_is_optional_to_the_trainer() -> None:
    """An operator of an older minor does not render what later minors added: the trainer defaults it."""
    older_operator = c.TrainerEnv(num_processes=2, process_id=1, coordinator_address="j-0.j.n.svc:8476")
    rendered = {
        name: value for name, value in older_operator.to_env().items() if name in V1_0.env
    }  # what an operator of contract 1.0 sets
    parsed = c.TrainerEnv.from_env(rendered)
    assert parsed.contract_version == c.UNVERSIONED
    assert dataclasses.replace(parsed, contract_version=c.CONTRACT_VERSION) == older_operator


def test_a_newer_minor_operator_is_accepted_and_its_unknown_variables_ignored() -> None:
    newer = ContractVersion(c.CONTRACT_VERSION.major, c.CONTRACT_VERSION.minor + 7)
    environ = {c.ENV_CONTRACT_VERSION: str(newer), "PAX_SOMETHING_LATER": "anything", c.ENV_PROCESS_ID: "0"}
    assert c.TrainerEnv.from_env(environ).contract_version == newer


@pytest.mark.parametrize(
    "operator", ["2.0", "0.9", f"{c.CONTRACT_VERSION.major + 1}.{c.CONTRACT_VERSION.minor}"]
)
def test_another_major_is_refused_naming_both_versions(operator: str) -> None:
    with pytest.raises(c.EnvError) as refused:
        c.TrainerEnv.from_env({c.ENV_CONTRACT_VERSION: operator})
    message = str(refused.value)
    assert f"{c.ENV_CONTRACT_VERSION}={operator}" in message
    assert f"operator speaks Pax contract {operator}" in message
    assert f"this trainer image speaks {c.CONTRACT_VERSION}" in message


@pytest.mark.parametrize("text", ["one", "1", "1.1.1", "v1.1", "1.-1", "99999.0"])
def test_a_malformed_version_is_an_env_error(text: str) -> None:
    with pytest.raises(c.EnvError, match=c.ENV_CONTRACT_VERSION):
        c.TrainerEnv.from_env({c.ENV_CONTRACT_VERSION: text})


def test_the_operator_renders_its_version() -> None:
    assert c.TrainerEnv().to_env()[c.ENV_CONTRACT_VERSION] == str(c.CONTRACT_VERSION)


def test_versions_order_by_number_not_text() -> None:
    assert ContractVersion.parse("1.10") > ContractVersion.parse("1.9")
    assert str(ContractVersion.parse(" 1.10 ")) == "1.10"


def test_a_flag_refused_under_a_newer_operator_names_both_versions() -> None:
    newer = ContractVersion(c.CONTRACT_VERSION.major, c.CONTRACT_VERSION.minor + 1)
    hint = c.newer_operator_hint(newer)
    assert str(newer) in hint and str(c.CONTRACT_VERSION) in hint
    assert c.newer_operator_hint(c.CONTRACT_VERSION) == c.newer_operator_hint(c.UNVERSIONED) == ""


# --- Results of other versions: the operator reads them all ------------------------------------------------

NEWER_TRAINER_RESULT = (
    '{"exit_reason": "stalled", "final_step": 500, "last_checkpoint_step": 400, '
    '"metrics": {"eval/loss": 1.5}, '
    '"message": "no step for 600 s", "attempt": 2, "contract_version": "1.9", "stall_seconds": 600}'
)
OLDER_TRAINER_RESULT = '{"exit_reason": "crashed", "final_step": 7, "message": "boom", "attempt": 0}'  # 1.0


def test_a_newer_trainers_result_keeps_its_progress() -> None:
    """An exit reason and fields added by a later minor: the steps, metrics and message still count."""
    result = c.TrainerResult.from_json(NEWER_TRAINER_RESULT)
    assert (result.exit_reason, result.final_step, result.last_checkpoint_step) == ("stalled", 500, 400)
    assert (result.metrics, result.message, result.attempt) == ({"eval/loss": 1.5}, "no step for 600 s", 2)
    assert result.contract_version == "1.9"


def test_an_older_trainers_result_reads_as_unversioned() -> None:
    result = c.TrainerResult.from_json(OLDER_TRAINER_RESULT)
    assert result.exit_reason is c.ExitReason.CRASHED and result.final_step == 7
    assert result.contract_version == str(c.UNVERSIONED)


def test_the_operator_folds_a_newer_trainers_result_into_the_status() -> None:
    from pax_operator.core.observe import PodView, classify_host, trainer_result

    pod = PodView(
        name="lm-0",
        uid="u",
        host=0,
        attempt=2,
        phase="Failed",
        deleting=False,
        exit_code=1,
        termination_message=NEWER_TRAINER_RESULT,
    )
    result = trainer_result(pod)
    assert result is not None and result.final_step == 500 and result.last_checkpoint_step == 400
    outcome = classify_host(0, pod)
    assert outcome is not None and outcome.message == "pod lm-0: trainer exited 1: no step for 600 s"


def test_every_override_the_operator_sets_is_a_hyperparameter_of_every_experiment() -> None:
    from pax_trainer.base_experiment import BaseExperiment

    assert set(c.OPERATOR_OVERRIDES) <= set(BaseExperiment.hyperparameters())
