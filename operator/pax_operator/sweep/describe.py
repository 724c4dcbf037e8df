"""An experiment-declared search space (spec.experimentSearchSpace): the operator cannot import user code, so
one short "describe" pod runs the trainer image with `--describe_search_space`; its termination message is
the space in PaxSweep's parameter form, kept in status.searchSpace. Pure: rendering and parsing, no I/O.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pax_contract as contract
from pydantic import ValidationError

from pax_operator.core import render
from pax_operator.core.decide import parse_time
from pax_operator.spec import CpuTopology, PaxJobSpec, TensorBoard, Topology
from pax_operator.sweep.algorithms import SpaceError
from pax_operator.sweep.spec import LABEL_SWEEP_NAME, SWEEP_KIND, Parameter, ParameterType, PaxSweepSpec

DESCRIBE_DEADLINE_SECONDS = 600.0  # from the pod's creation (image pull included) to its termination
# describing in all, from the condition Describing turning True: a describe pod deleted and created again, or
# one stuck terminating (its node gone), must not keep the sweep describing for ever
DESCRIBE_TOTAL_SECONDS = 2 * DESCRIBE_DEADLINE_SECONDS
DESCRIBE_POLL_SECONDS = 2.0  # describe pods are not watched (the operator watches gang pods only)
LABEL_DESCRIBE = "pax.dev/sweep-describe"
MAX_PARAMETERS = 64


def describe_pod_name(sweep: str) -> str:
    return f"{sweep}-describe"


@dataclass(frozen=True)
class DescribePod:
    """The describe pod, as far as the sweep is concerned."""

    phase: str | None
    message: str  # the trainer container's termination message ("" until it terminated)
    exit_code: int | None
    created: datetime | None
    deleting: bool = False


def describe_view(pod: dict[str, Any]) -> DescribePod:
    status = pod.get("status") or {}
    terminated: dict[str, Any] = {}
    for container in status.get("containerStatuses") or []:
        if container.get("name") == render.TRAINER_CONTAINER:
            terminated = (container.get("state") or {}).get("terminated") or {}
    metadata = pod.get("metadata") or {}
    code = terminated.get("exitCode")
    return DescribePod(
        phase=status.get("phase"),
        message=str(terminated.get("message") or ""),
        exit_code=None if code is None else int(code),
        created=parse_time(metadata.get("creationTimestamp")),
        deleting=metadata.get("deletionTimestamp") is not None,
    )


def failure_message(pod: DescribePod) -> str:
    """Why the describe pod failed: the trainer's result message when it wrote one, else the raw text."""
    try:
        reason = contract.TrainerResult.from_json(pod.message).message
    except ValueError:
        reason = pod.message.strip()
    return reason or f"exit code {pod.exit_code}"


def parse_search_space(text: str) -> list[Parameter]:
    """The describe pod's output (`{"parameters": [...]}`) as validated PaxSweep parameters; SpaceError says
    what is wrong. The same rules as the CRD's for declared parameters."""
    if len(text.encode()) > contract.TERMINATION_MESSAGE_MAX_BYTES:
        raise SpaceError(
            f"the search space description is longer than {contract.TERMINATION_MESSAGE_MAX_BYTES}"
        )
    try:
        doc = json.loads(text)
        items = doc["parameters"]
        if not isinstance(items, list):
            raise TypeError("parameters is not a list")
        parameters = [Parameter.model_validate(item) for item in items]
    except (ValueError, KeyError, TypeError, ValidationError) as err:
        raise SpaceError(f"the experiment's search space description does not parse: {err}") from None
    if not 1 <= len(parameters) <= MAX_PARAMETERS:
        raise SpaceError(
            f"the experiment's search space has {len(parameters)} parameters (1..{MAX_PARAMETERS})"
        )
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise SpaceError(f"the experiment's search space names a parameter twice: {names}")
    for p in parameters:
        where = f"the experiment's search space, parameter {p.name!r}"
        if not contract.is_override_name(p.name):
            raise SpaceError(f"{where}: not a hyperparameter name")
        if p.type is ParameterType.DISCRETE:
            if not p.values or len(set(p.values)) != len(p.values):
                raise SpaceError(f"{where}: discrete values must be non-empty and distinct")
            continue
        if p.min is None or p.max is None or not (math.isfinite(p.min) and math.isfinite(p.max)):
            raise SpaceError(f"{where}: {p.type} needs finite min and max")
        if p.min >= p.max:
            raise SpaceError(f"{where}: min {p.min:g} must be below max {p.max:g}")
        if p.scale == "log" and p.min <= 0:
            raise SpaceError(f"{where}: log scale needs a positive range")
    return parameters


def encode_search_space(parameters: list[Parameter]) -> str:
    """The canonical status.searchSpace text."""
    doc = {
        "parameters": [p.model_dump(mode="json", by_alias=True, exclude_defaults=True) for p in parameters]
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def sweep_parameters(
    spec: PaxSweepSpec, search_space: str | None, recorded: Collection[str] = ()
) -> list[Parameter] | None:
    """The parameters the algorithms search: the declared ones, or the experiment's (None until described).

    The experiment's are fixed by the first trials: `recorded`, the names the trials' records searched,
    whatever template.overrides says now (the template is mutable; the records are points of that space, so
    a rebuild after an edit replays the same one). Before any trial, hyperparameters the template fixes with
    overrides (or checkpointIntervalSteps) stay fixed and are not searched."""
    if not spec.experiment_search_space:
        return list(spec.parameters)
    if not search_space:
        return None
    described = parse_search_space(search_space)
    parameters = [p for p in described if p.name in recorded]
    if not parameters:  # no trial yet (or no record that names a parameter of the space)
        fixed = spec.template.effective_overrides
        parameters = [p for p in described if p.name not in fixed]
    if not parameters:
        raise SpaceError("template.overrides fixes every hyperparameter of the experiment's search space")
    return parameters


def recorded_names(records: Iterable[tuple[int, Mapping[str, str]]]) -> frozenset[str]:
    """The names an experimentSearchSpace sweep searched, from its trials' records ((index, params)): the
    set most records hold, the lowest index's on a tie (a hand-edited record does not change the space)."""
    named = [(index, params) for index, params in records if params]
    if not named:
        return frozenset()
    first = min(named, key=lambda r: r[0])[1].keys()
    agree, half = 0, (len(named) + 1) // 2
    for _, params in named:  # the usual case, without a set made per record
        agree += params.keys() == first
        if agree >= half:
            return frozenset(first)
    sets = Counter(frozenset(params) for _, params in sorted(named, key=lambda r: r[0]))
    return sets.most_common(1)[0][0]


def overridden(template: PaxJobSpec, parameters: Iterable[str]) -> list[str]:
    """The searched hyperparameters the template fixes too (an experimentSearchSpace sweep's template edited
    after its first trial): each trial runs its proposed value. checkpointIntervalSteps names itself."""
    fixed = template.effective_overrides
    return [
        name if name in template.overrides else f"checkpointIntervalSteps ({name})"
        for name in sorted(set(parameters) & set(fixed))
    ]


def render_describe_pod(sweep_name: str, namespace: str, uid: str, template: PaxJobSpec) -> dict[str, Any]:
    """The describe pod: the trainer pod of host 0 (image, env, volumes, PSA-restricted security context) on
    one CPU host, without TensorBoard or ports, running `--describe_search_space`, owned by the PaxSweep."""
    one_host = template.model_copy(
        update={"topology": Topology(cpu=CpuTopology(hosts=1)), "tensorboard": TensorBoard(enabled=False)}
    )
    name = describe_pod_name(sweep_name)
    pod = render.render_pod(render.JobRef(name=name, namespace=namespace, uid=uid), one_host, 0, 0)
    owner = render.JobRef(sweep_name, namespace, uid, SWEEP_KIND)
    invocation = contract.TrainerInvocation(
        exp=template.experiment,
        job_log_dir=template.job_log_dir,
        overrides=template.effective_overrides,
        describe_search_space=True,
    )
    trainer = pod["spec"]["containers"][0]
    trainer["command"] = [render.kubelet_escape(arg) for arg in invocation.command()]
    trainer.pop("ports", None)
    trainer["terminationMessagePolicy"] = "FallbackToLogsOnError"
    for key in ("hostname", "subdomain"):
        pod["spec"].pop(key, None)
    labels = dict(template.pod_template.labels)
    labels |= {LABEL_SWEEP_NAME: sweep_name, LABEL_DESCRIBE: "true"}  # no job-name label: not a gang pod
    pod["metadata"]["name"] = name
    pod["metadata"]["labels"] = labels
    pod["metadata"]["ownerReferences"] = [owner.owner_reference()]
    return pod
