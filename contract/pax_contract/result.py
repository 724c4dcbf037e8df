"""The result process 0 writes on exit (the container's termination message)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pax_contract.exit_codes import ExitReason
from pax_contract.version import CONTRACT_VERSION, UNVERSIONED

TERMINATION_MESSAGE_MAX_BYTES = 4096  # kubelet truncates termination messages beyond this


@dataclass
class TrainerResult:
    """What process 0 writes to PAX_RESULT_FILE on exit; the operator reads it as the termination message."""

    exit_reason: (
        ExitReason | str
    )  # a str only when read from a newer trainer's result: a reason not known here
    final_step: int | None = None
    last_checkpoint_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    attempt: int = 0
    contract_version: str = str(CONTRACT_VERSION)  # the writer's; a result without one is UNVERSIONED's

    def to_json(self) -> str:
        """Serialise, dropping metrics then truncating the message to fit the termination-message limit."""
        doc: dict[str, Any] = asdict(self)
        doc["exit_reason"] = str(self.exit_reason)
        text = json.dumps(doc, sort_keys=True)
        while len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES and doc["metrics"]:
            doc["metrics"].pop(sorted(doc["metrics"])[-1])
            text = json.dumps(doc, sort_keys=True)
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            overflow = len(text.encode()) - TERMINATION_MESSAGE_MAX_BYTES + 3
            doc["message"] = doc["message"][: max(0, len(doc["message"]) - overflow)] + "..."
            text = json.dumps(doc, sort_keys=True)
        return text

    @classmethod
    def from_json(cls, text: str) -> TrainerResult:
        """Parse a termination message; raises ValueError on anything that is not a result. Steps must be
        integers in [0, 2**63); metrics that are not numbers are left out (NaN and ±Infinity are numbers).
        Any version's result parses: unknown fields are ignored, missing ones default, and an exit_reason
        this side does not know (a newer trainer's) is kept as text (the exit code classifies the exit)."""
        try:
            doc = json.loads(text)
            return cls(
                exit_reason=_exit_reason(doc["exit_reason"]),
                final_step=_step(doc, "final_step"),
                last_checkpoint_step=_step(doc, "last_checkpoint_step"),
                metrics={str(k): float(v) for k, v in (doc.get("metrics") or {}).items() if _is_number(v)},
                message=str(doc.get("message", "")),
                attempt=int(doc.get("attempt", 0)),
                contract_version=str(doc.get("contract_version") or UNVERSIONED),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a Pax trainer result: {err}") from err


def _exit_reason(value: object) -> ExitReason | str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"exit_reason {value!r} is not a reason")
    return ExitReason(value) if value in ExitReason._value2member_map_ else value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _step(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is not None and not (_is_number(value) and isinstance(value, int) and 0 <= value < 2**63):
        raise ValueError(f"{key} {value!r} is not a step")
    return value
