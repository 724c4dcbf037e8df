"""The trainer's command line: one `TrainerInvocation`, rendered by the operator and parsed by the trainer.

Override names follow one rule (OVERRIDE_NAME_PATTERN): a flat Python identifier in ASCII, because the
trainer's hyperparameters are the experiment's flat attributes. The CRD's CEL rule on `spec.overrides`
uses the same pattern (tests/unit/test_contract.py checks it).
"""

from __future__ import annotations

import argparse
import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

ENTRYPOINT = ("python", "-m", "pax_trainer")
OVERRIDE_NAME_PATTERN = "^[A-Za-z_][A-Za-z0-9_]*$"  # RE2 and Python agree on it (used with fullmatch)
OVERRIDE_NAME_MAX_LENGTH = 128
_OVERRIDE_NAME = re.compile(OVERRIDE_NAME_PATTERN.strip("^$"))
# The hyperparameters the operator sets by name: PaxJob's checkpointIntervalSteps is this override, so every
# experiment has it (BaseExperiment) and a rename is a contract change.
OVERRIDE_SAVE_INTERVAL = "save_interval_steps"
OPERATOR_OVERRIDES = (OVERRIDE_SAVE_INTERVAL,)


class Mode(enum.StrEnum):
    """What the trainer does (paxml's --mode)."""

    TRAIN = "train"
    EVAL = "eval"
    DECODE = "decode"


class InvocationError(ValueError):
    """The command line does not parse; the message says why."""


def is_override_name(name: str) -> bool:
    return len(name) <= OVERRIDE_NAME_MAX_LENGTH and _OVERRIDE_NAME.fullmatch(name) is not None


def split_override(item: str) -> tuple[str, str]:
    """'name=value' → (name, value); InvocationError unless name follows the override-name rule."""
    name, sep, value = item.partition("=")
    if not sep or not is_override_name(name):
        raise InvocationError(
            f"malformed override {item!r}: expected NAME=VALUE with NAME a Python identifier "
            f"(letters, digits, _; at most {OVERRIDE_NAME_MAX_LENGTH} characters)"
        )
    return name, value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvocationError(f"bad flags: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The invocation's flags (paxml's names); the trainer may add flags of its own (e.g. --list)."""
    p = _Parser(
        prog="pax_trainer",
        description="python -m pax_trainer --exp NAME --job_log_dir DIR [--set NAME=VALUE ...]",
        allow_abbrev=False,
    )
    p.add_argument("--exp", help="registered experiment name or dotted module.Class")
    p.add_argument("--mode", choices=[str(m) for m in Mode], default=str(Mode.TRAIN))
    p.add_argument("--job_log_dir", help="local path or gs://bucket/path")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override a hyperparameter"
    )
    p.add_argument("--overrides_json", help="JSON object of overrides, e.g. '{\"learning_rate\": 0.01}'")
    p.add_argument("--dna_json", help="PyGlove DNA (pg.to_json_str) fixing the experiment's hyper values")
    p.add_argument(
        "--describe_search_space",
        action="store_true",
        help="print the experiment's PyGlove search space as JSON (also the result file) and exit",
    )
    return p


@dataclass(frozen=True)
class TrainerInvocation:
    """One run of the trainer: `ENTRYPOINT + to_argv()`."""

    exp: str
    job_log_dir: str
    mode: Mode = Mode.TRAIN
    overrides: Mapping[str, str] = field(default_factory=dict)  # one --set=NAME=VALUE each, sorted
    overrides_json: str | None = None
    dna_json: str | None = None
    describe_search_space: bool = False  # print the search space (SEARCH_SPACE_*) instead of running

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "overrides", dict(sorted(self.overrides.items())))
        bad = [name for name in self.overrides if not is_override_name(name)]
        if bad:
            raise InvocationError(f"override names must be Python identifiers: {', '.join(map(repr, bad))}")

    def to_argv(self) -> list[str]:
        """The flags, one `--flag=value` argument each (values may contain anything, spaces included)."""
        argv = [f"--exp={self.exp}", f"--mode={self.mode}", f"--job_log_dir={self.job_log_dir}"]
        argv += [f"--set={name}={value}" for name, value in self.overrides.items()]
        if self.overrides_json is not None:
            argv.append(f"--overrides_json={self.overrides_json}")
        if self.dna_json is not None:
            argv.append(f"--dna_json={self.dna_json}")
        if self.describe_search_space:
            argv.append("--describe_search_space")
        return argv

    def command(self) -> list[str]:
        """The container command: the entry point and the flags."""
        return [*ENTRYPOINT, *self.to_argv()]

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainerInvocation:
        """From build_parser()'s parse; InvocationError when a required flag is missing or malformed."""
        if not args.exp:
            raise InvocationError("--exp is required")
        if not args.job_log_dir:
            raise InvocationError("--job_log_dir is required")
        overrides = dict(split_override(item) for item in args.set)  # the last of repeated names wins
        return cls(
            exp=args.exp,
            job_log_dir=args.job_log_dir,
            mode=Mode(args.mode),
            overrides=overrides,
            overrides_json=args.overrides_json,
            dna_json=args.dna_json,
            describe_search_space=args.describe_search_space,
        )

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> TrainerInvocation:
        """Parse the flags (without ENTRYPOINT); InvocationError on anything malformed."""
        return cls.from_namespace(build_parser().parse_args(list(argv)))
