"""The contract package and docs/contract.md say the same thing; the invocation, env and result round-trip;
the CRD's rules come from the contract's constants."""

import re
import string
from typing import Any

import pax_contract as c
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pax_cluster.procs import DEPLOY, REPO_ROOT

DOC = (REPO_ROOT / "docs" / "contract.md").read_text()
CRD = yaml.safe_load((DEPLOY / "crds" / "pax.dev_paxjobs.yaml").read_text())
SPEC = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


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


def test_documented_exit_codes_match_the_table() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", DOC, flags=re.M))
    assert {int(k): v.strip() for k, v in table.items()} == {int(code): code.meaning for code in c.ExitCode}
    for port in c.RESERVED_PORTS:
        assert str(port) in DOC


def test_documented_env_matches_the_description() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| (.+) \|$", DOC, flags=re.M)
    assert [name for name, _ in rows] == list(c.TRAINER_ENV)
    for name, value in c.POD_ENV.items():
        assert f"{name}={value}" in DOC
    for name in (*c.RESERVED_ENV_PREFIXES, *c.RESERVED_ENV_NAMES):
        assert f"`{name}`" in DOC
    assert f"`{c.OVERRIDE_NAME_PATTERN}`" in DOC


def test_reasons_outcomes_and_event_reasons_derive_from_one_table() -> None:
    assert {reason: int(code) for reason, code in c.EXIT_CODE_FOR_REASON.items()} == {
        c.ExitReason.COMPLETED: 0,
        c.ExitReason.CRASHED: 1,
        c.ExitReason.CONFIG_ERROR: 2,
        c.ExitReason.STORAGE_ERROR: 3,
        c.ExitReason.PREEMPTED: 42,
    }
    assert [c.event_reason(code) for code in (0, 1, 2, 3, 42, 137, 143, 139)] == [
        "Completed",
        "Crashed",
        "ConfigError",
        "StorageError",
        "Preempted",
        "Killed",
        "Terminated",
        "Error",
    ]
    assert {code.reason for code in c.ExitCode if code.reason is not None} == set(c.ExitReason)


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


@pytest.mark.parametrize(
    "text", ["", "not json", "{}", '{"exit_reason": 7}', '{"exit_reason": ""}', "[1, 2]"]
)
def test_garbage_is_not_a_result(text: str) -> None:
    with pytest.raises(ValueError, match="not a Pax trainer result"):
        c.TrainerResult.from_json(text)


def test_checkpoint_dir_name_is_paxml_style() -> None:
    assert c.checkpoint_dir_name(100) == "checkpoint_00000100"


# --- Invocation: one TrainerInvocation, rendered by the operator, parsed by the trainer ---------------

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(
    exp=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,30}", fullmatch=True),
    job_log_dir=st.one_of(
        st.text(min_size=1, max_size=40).map(lambda t: "/" + t), st.just("gs://bucket/run x")
    ),
    mode=st.sampled_from(list(c.Mode)),
    overrides=st.dictionaries(_names, _text, max_size=6),
    overrides_json=st.one_of(st.none(), _text),
    dna_json=st.one_of(st.none(), _text),
    describe=st.booleans(),
)
def test_invocation_round_trips(
    exp: str,
    job_log_dir: str,
    mode: c.Mode,
    overrides: dict[str, str],
    overrides_json: str | None,
    dna_json: str | None,
    describe: bool,
) -> None:
    invocation = c.TrainerInvocation(exp, job_log_dir, mode, overrides, overrides_json, dna_json, describe)
    argv = invocation.to_argv()
    assert c.TrainerInvocation.from_argv(argv) == invocation
    assert invocation.command() == [*c.ENTRYPOINT, *argv]
    sets = [a for a in argv if a.startswith("--set=")]
    assert sets == sorted(sets, key=lambda a: a.split("=", 2)[1])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode=train", "--job_log_dir=/x"], "--exp is required"),
        (["--exp=e"], "--job_log_dir is required"),
        (["--exp=e", "--job_log_dir=/x", "--mode=serve"], "bad flags"),
        (["--exp=e", "--job_log_dir=/x", "--bogus"], "bad flags"),
        (["--ex=e", "--job_log_dir=/x"], "bad flags"),  # no abbreviations: exactly the contract's names
        (["--exp=e", "--job_log_dir=/x", "--set=model.num_layers=2"], "malformed override"),
        (["--exp=e", "--job_log_dir=/x", "--set=novalue"], "malformed override"),
        (["--exp=e", "--job_log_dir=/x", "--set=lérning=1"], "malformed override"),
    ],
)
def test_malformed_invocations(argv: list[str], message: str) -> None:
    with pytest.raises(c.InvocationError, match=re.escape(message)):
        c.TrainerInvocation.from_argv(argv)


def test_repeated_override_last_wins_and_values_keep_equals_signs() -> None:
    parsed = c.TrainerInvocation.from_argv(["--exp=e", "--job_log_dir=/x", "--set=a=1", "--set=a=b=c"])
    assert parsed.overrides == {"a": "b=c"}


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("learning_rate", True),
        ("_x9", True),
        ("a" * c.OVERRIDE_NAME_MAX_LENGTH, True),
        ("a" * (c.OVERRIDE_NAME_MAX_LENGTH + 1), False),
        ("model.num_layers", False),
        ("9lives", False),
        ("learning rate", False),
        ("lr\n", False),
        ("ñ", False),
        ("", False),
    ],
)
def test_override_name_rule(name: str, ok: bool) -> None:
    assert c.is_override_name(name) is ok


# --- Env: one description, written by the operator, read by the trainer ------------------------------

_port = st.integers(1, 65535)


@st.composite
def _trainer_envs(draw: st.DrawFn) -> c.TrainerEnv:
    num = draw(st.integers(1, 4096))
    megascale = None
    if draw(st.booleans()):
        slices = draw(st.integers(1, 64))
        megascale = c.Megascale("j-0.j.ns.svc:8080", slices, draw(st.integers(0, slices - 1)), draw(_port))
    return c.TrainerEnv(
        num_processes=num,
        process_id=draw(st.integers(0, num - 1)),
        coordinator_address=draw(st.just("j-0.j.ns.svc:8476") if num > 1 else st.sampled_from([None, "h:1"])),
        restart_attempt=draw(st.integers(0, 10**6)),
        result_file=draw(st.sampled_from([None, c.DEFAULT_RESULT_FILE])),
        metrics_port=draw(st.one_of(st.just(0), _port)),
        job_name=draw(st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))),
        job_namespace=draw(st.one_of(st.none(), st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))),
        pod_ip=draw(st.sampled_from([None, "10.0.0.7"])),
        megascale=megascale,
    )


@given(_trainer_envs())
def test_env_round_trips(env: c.TrainerEnv) -> None:
    variables = env.to_env()
    assert set(variables) <= set(c.TRAINER_ENV)
    assert list(variables) == [name for name in c.TRAINER_ENV if name in variables]
    assert c.TrainerEnv.from_env(variables) == env


def test_env_defaults_when_unset() -> None:
    unset = c.TrainerEnv(contract_version=c.UNVERSIONED)  # no PAX_CONTRACT_VERSION: an operator before it
    assert c.TrainerEnv.from_env({}) == unset
    assert c.TrainerEnv.from_env({c.ENV_NUM_PROCESSES: "", c.ENV_METRICS_PORT: " "}) == unset


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({c.ENV_NUM_PROCESSES: "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
        ({c.ENV_PROCESS_ID: "1.0"}, "JAX_PROCESS_ID='1.0' is not an integer"),
        ({c.ENV_RESTART_ATTEMPT: "1_000"}, "PAX_RESTART_ATTEMPT='1_000' is not an integer"),
        ({c.ENV_METRICS_PORT: "٣"}, "PAX_METRICS_PORT='٣' is not an integer"),
        ({c.ENV_METRICS_PORT: "70000"}, "PAX_METRICS_PORT=70000 is not a port"),
        ({c.ENV_NUM_PROCESSES: "2", c.ENV_PROCESS_ID: "2", c.ENV_COORDINATOR_ADDRESS: "h:1"}, "not in [0"),
        ({c.ENV_NUM_PROCESSES: "2"}, "needs JAX_COORDINATOR_ADDRESS"),
        ({c.ENV_RESTART_ATTEMPT: "-1"}, "is negative"),
        ({c.ENV_NUM_SLICES: "2", c.ENV_SLICE_ID: "x"}, "MEGASCALE_SLICE_ID='x' is not an integer"),
    ],
)
def test_malformed_env_is_one_error_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(c.EnvError, match=re.escape(message)):
        c.TrainerEnv.from_env(environ)


@pytest.mark.parametrize(
    ("name", "reserved"),
    [
        ("JAX_PLATFORMS", True),
        ("MEGASCALE_PORT", True),
        ("PAX_ANYTHING", True),
        ("TPU_WORKER_ID", True),
        ("POD_IP", True),
        ("HOME", True),
        ("PYTHONUNBUFFERED", True),
        ("STORAGE_EMULATOR_HOST", False),
        ("XLA_FLAGS", False),
        ("LIBTPU_INIT_ARGS", False),
    ],
)
def test_reserved_env_names(name: str, reserved: bool) -> None:
    assert c.is_reserved_env(name) is reserved


# --- The CRD uses the contract's rules ---------------------------------------------------------------


def _rules(node: dict[str, Any]) -> list[str]:
    return [" ".join(v["rule"].split()) for v in node.get("x-kubernetes-validations", [])]


def test_crd_override_names_use_the_contract_pattern() -> None:
    (rule,) = [r for r in _rules(SPEC["overrides"]) if "matches" in r]
    cel_pattern = c.OVERRIDE_NAME_PATTERN.replace("\\", "\\\\")
    assert f"k.matches('{cel_pattern}')" in rule
    assert f"k.size() <= {c.OVERRIDE_NAME_MAX_LENGTH}" in rule


def test_crd_reserved_env_names_are_the_contract_ones() -> None:
    env_item = SPEC["podTemplate"]["properties"]["env"]["items"]
    (rule,) = [r for r in _rules(env_item) if "startsWith" in r]
    prefixes = " || ".join(f"self.name.startsWith('{p}')" for p in c.RESERVED_ENV_PREFIXES)
    names = ", ".join(f"'{n}'" for n in c.RESERVED_ENV_NAMES)
    assert rule == f"!({prefixes} || self.name in [{names}])"


def test_crd_reserved_ports_are_the_contract_ones() -> None:
    (rule,) = _rules(SPEC["tensorboard"]["properties"]["port"])
    assert rule == f"!(self in [{', '.join(str(p) for p in c.RESERVED_PORTS)}])"


def test_printable_override_values_survive() -> None:
    value = string.printable + "$(HOME) $$ ünïcode"
    argv = c.TrainerInvocation("e", "/x", overrides={"v": value}).to_argv()
    assert c.TrainerInvocation.from_argv(argv).overrides == {"v": value}
