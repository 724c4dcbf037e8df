"""The pod's grace period and the trainer's PAX_TERMINATION_GRACE_SECONDS come from one value."""

from __future__ import annotations

import pax_contract as contract
import pytest
from pax_operator.core.render import render_gang, render_pod
from pax_operator.spec import DEFAULT_TERMINATION_GRACE_SECONDS as TERMINATION_GRACE_SECONDS
from paxjob_factory import JOB, make_spec


@pytest.mark.parametrize(
    "topology",
    [
        {"cpu": {"hosts": 2}},
        {"tpu": {"acceleratorType": "v5p", "topology": "2x2x2", "slices": 2}},
    ],
)
def test_every_gang_pod_tells_the_trainer_its_own_grace_period(topology: dict[str, object]) -> None:
    for pod in render_gang(JOB, make_spec(topology=topology), attempt=3):
        (trainer,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        assert pod["spec"]["terminationGracePeriodSeconds"] == TERMINATION_GRACE_SECONDS
        assert env[contract.ENV_TERMINATION_GRACE] == str(TERMINATION_GRACE_SECONDS)
        parsed = contract.TrainerEnv.from_env({k: v for k, v in env.items() if v is not None})
        assert parsed.termination_grace_s == pod["spec"]["terminationGracePeriodSeconds"]


def test_the_grace_variable_is_reserved_and_rendered_once() -> None:
    """podTemplate.env cannot set it (the CRD rejects reserved names), so the rendered value is the one the
    trainer reads (a later duplicate would win in the container)."""
    assert contract.is_reserved_env(contract.ENV_TERMINATION_GRACE)
    names = [e["name"] for e in render_pod(JOB, make_spec(), 0, 0)["spec"]["containers"][0]["env"]]
    assert names.count(contract.ENV_TERMINATION_GRACE) == 1
