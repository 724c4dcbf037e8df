"""CLI: python -m pax_trainer --exp NAME --mode train|eval|decode --job_log_dir DIR [--set k=v ...]."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from typing import TYPE_CHECKING, NoReturn

from pax_contract import (
    ENV_RESTART_ATTEMPT,
    ENV_RESULT_FILE,
    EXIT_CODE_FOR_REASON,
    ExitReason,
    TrainerResult,
)

from pax_trainer import paths, setup_jax
from pax_trainer.errors import ConfigError, TrainerError

if TYPE_CHECKING:
    from pax_trainer.executor import RunStatus

log = logging.getLogger("pax_trainer")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"bad flags: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The CLI (paxml flag names)."""
    p = _Parser(prog="pax_trainer", description=__doc__)
    p.add_argument("--exp", help="registered experiment name or dotted module.Class")
    p.add_argument("--mode", choices=("train", "eval", "decode"), default="train")
    p.add_argument("--job_log_dir", help="local path or gs://bucket/path")
    p.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="override a hyperparameter"
    )
    p.add_argument("--overrides_json", help="JSON object of overrides, e.g. '{\"learning_rate\": 0.01}'")
    p.add_argument("--dna_json", help="PyGlove DNA (pg.to_json_str) fixing the experiment's hyper values")
    p.add_argument("--list", action="store_true", help="list registered experiments and exit")
    return p


def _attempt() -> int:
    try:
        return int(os.environ.get(ENV_RESTART_ATTEMPT) or 0)
    except ValueError:
        return 0


def _write_result(result: TrainerResult) -> None:
    target = os.environ.get(ENV_RESULT_FILE)
    # Process 0 speaks for the gang; a config error is written by every host (each knows it), so the
    # operator sees the reason whichever host it hears from first.
    everyone = result.exit_reason is ExitReason.CONFIG_ERROR
    if not target or (setup_jax.process_id_from_env() != 0 and not everyone):
        return
    try:
        with open(target, "w") as f:
            f.write(result.to_json())
    except OSError as err:
        print(f"pax_trainer: cannot write result to {target}: {err}", file=sys.stderr)


def _setup_logging() -> None:
    pid = setup_jax.process_id_from_env()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [p{pid}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorstore", "fsspec", "gcsfs", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(args: argparse.Namespace, status: RunStatus) -> None:
    """Validate everything (writing nothing), then join the gang and run the mode."""
    from pax_trainer import checkpoints, hparams, registry

    if not args.exp:
        raise ConfigError("--exp is required")
    if not args.job_log_dir:
        raise ConfigError("--job_log_dir is required")
    exp = registry.get(args.exp)()
    hparams.apply_overrides(exp, args.set, args.overrides_json, args.dna_json)
    setup_jax.distributed_env()
    paths.check_job_log_dir(args.job_log_dir)
    if exp.init_from_checkpoint and args.mode == "train":
        checkpoints.resolve_init_checkpoint(exp.init_from_checkpoint)

    from pax_trainer.executor import Executor
    from pax_trainer.preemption import PreemptionWatcher

    setup_jax.initialize()
    watcher = PreemptionWatcher()
    watcher.install()
    executor = Executor(exp, args.job_log_dir, status, watcher)
    {"train": executor.train, "eval": executor.evaluate, "decode": executor.decode}[args.mode]()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the contract's exit code and writes the result file on every path."""
    from pax_trainer.executor import RunStatus

    status = RunStatus()
    reason, message = ExitReason.COMPLETED, ""
    try:
        args = build_parser().parse_args(argv)
        paths.prepare_environment()
        if args.list:
            from pax_trainer import registry

            for name, cls in registry.registered().items():
                print(f"{name}\t{cls.__module__}.{cls.__qualname__}\t{cls.description}")
            return 0
        _setup_logging()
        run(args, status)
        message = status.message
    except TrainerError as err:
        reason, message = err.reason, str(err)
        if reason != ExitReason.PREEMPTED:
            print(f"pax_trainer: error: {message}", file=sys.stderr)
    except KeyboardInterrupt:
        reason, message = ExitReason.CRASHED, "interrupted"
    except Exception as err:
        reason, message = ExitReason.CRASHED, f"{type(err).__name__}: {err}"
        traceback.print_exc()
    code = int(EXIT_CODE_FOR_REASON[reason])
    result = TrainerResult(
        exit_reason=reason,
        final_step=status.final_step,
        last_checkpoint_step=status.last_checkpoint_step,
        metrics=status.metrics,
        message=" ".join(message.split()),
        attempt=_attempt(),
    )
    _write_result(result)
    if reason == ExitReason.PREEMPTED:
        log.info("exiting %d: %s", code, message)
    sys.stdout.flush()
    sys.stderr.flush()
    if reason == ExitReason.CRASHED and _multi_process():
        os._exit(code)  # peers may be gone: skip jax.distributed's shutdown barrier
    return code


def _multi_process() -> bool:
    try:
        return int(os.environ.get("JAX_NUM_PROCESSES") or 1) > 1
    except ValueError:
        return False
