"""The contract's version: which operator and which trainer image may work together.

`MAJOR.MINOR`. A minor release only adds what the other side may lack or ignore: an environment variable
the trainer defaults when unset, a result field the operator defaults when missing, a flag rendered only
when a user asks for the feature that needs it. Anything else (a name removed or renamed, a meaning or
format changed, something the other side must now send) is a new major. Same major: compatible, whichever
minor is newer. Another major: the trainer refuses to start (exit 2, a config error naming both versions).
docs/contract.md states the rule; tests/unit/test_contract_version.py holds each version's surface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"([0-9]{1,4})\.([0-9]{1,4})")


@dataclass(frozen=True, order=True)
class ContractVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> ContractVersion:
        """'MAJOR.MINOR' → ContractVersion; ValueError on anything else."""
        match = _VERSION.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not a contract version (MAJOR.MINOR)")
        return cls(int(match[1]), int(match[2]))

    def compatible_with(self, other: ContractVersion) -> bool:
        return self.major == other.major


CONTRACT_VERSION = ContractVersion(1, 1)
# What a side that states no version speaks: operators and trainer images from before the version existed.
UNVERSIONED = ContractVersion(1, 0)


def incompatibility(operator: ContractVersion, trainer: ContractVersion = CONTRACT_VERSION) -> str | None:
    """Why this trainer image cannot run under this operator (the message names both versions), or None."""
    if operator.compatible_with(trainer):
        return None
    newer = "operator" if operator > trainer else "trainer image"
    return (
        f"the operator speaks Pax contract {operator}, this trainer image speaks {trainer}: another major "
        f"version is incompatible (the {newer} is newer); run a trainer image built for contract "
        f"{operator.major}.x, or an operator of contract {trainer.major}.x"
    )


def newer_operator_hint(operator: ContractVersion, trainer: ContractVersion = CONTRACT_VERSION) -> str:
    """A suffix for a flag this trainer image does not know: the operator may be newer than the image."""
    if operator <= trainer:
        return ""
    return (
        f" (the operator speaks Pax contract {operator}, this trainer image {trainer}: the flag may be one"
        f" this image is too old to know; use a trainer image built for contract {operator} or newer)"
    )
