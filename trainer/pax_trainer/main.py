"""CLI: python -m pax_trainer --exp NAME --mode train|eval|decode --job_log_dir DIR [--set k=v ...]."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import traceback
from dataclasses import replace

from pax_contract import (
    CHECKPOINTS_DIR,
    ENV_RESULT_FILE,
    EXIT_CODE_FOR_REASON,
    EnvError,
    ExitReason,
    InvocationError,
    TrainerEnv,
    TrainerInvocation,
    TrainerResult,
    newer_operator_hint,
    parse_contract_version,
)
from pax_contract import build_parser as invocation_parser

from pax_trainer import paths, setup_jax, storage
from pax_trainer.errors import ConfigError, Preempted, TrainerError, set_fatal_handler
from pax_trainer.preemption import PreemptionWatcher

log = logging.getLogger("pax_trainer")
# main and a watchdog's exit (the grace period's end) may write the result at the same moment: one at a time,
# so the file holds one whole JSON object, never two interleaved.
_RESULT_LOCK = threading.Lock()


def build_parser() -> argparse.ArgumentParser:
    """The contract's invocation flags (pax_contract.build_parser) plus the trainer's own --list."""
    p = invocation_parser()
    p.add_argument("--list", action="store_true", help="list registered experiments and exit")
    return p


def parse_args(argv: list[str] | None) -> TrainerInvocation | None:
    """The contract's invocation, None for --list; ConfigError (exit 2) if malformed, naming both contract
    versions when the operator's is newer (the flag may be one this image is too old to know)."""
    try:
        args = build_parser().parse_args(argv)
        return None if args.list else TrainerInvocation.from_namespace(args)
    except InvocationError as err:
        raise ConfigError(f"{err}{_newer_operator_hint()}") from None


def _newer_operator_hint() -> str:
    try:
        return newer_operator_hint(parse_contract_version(os.environ))
    except EnvError:  # said by the environment check that follows
        return ""


def _env_for_reporting() -> TrainerEnv | None:
    """The environment for reporting a result; None if malformed (the run has then failed with exit 2)."""
    try:
        return setup_jax.read_env()
    except ConfigError:
        return None


def _attempt() -> int:
    env = _env_for_reporting()
    return env.restart_attempt if env is not None else 0


def _write_result(result: TrainerResult) -> None:
    # Process 0 speaks for the gang; a config error is written by every host (each knows it), so the
    # operator sees the reason whichever host it hears from first.
    everyone = result.exit_reason is ExitReason.CONFIG_ERROR
    env = _env_for_reporting()
    if env is None or env.process_id == 0 or everyone:
        _write_result_file(result.to_json())


def _write_result_file(text: str) -> None:
    """The termination-message file ($PAX_RESULT_FILE), if set; a failure to write only says so."""
    target = os.environ.get(ENV_RESULT_FILE)
    if not target:
        return
    try:
        with _RESULT_LOCK, open(target, "w") as f:
            f.write(text)
    except OSError as err:
        print(f"pax_trainer: cannot write result to {target}: {err}", file=sys.stderr)


def _setup_logging(pid: int) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s [p{pid}] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorstore", "fsspec", "gcsfs", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(invocation: TrainerInvocation, status: TrainerResult, watcher: PreemptionWatcher) -> None:
    """Validate everything (writing nothing), then join the gang and run the mode."""
    import pax_trainer.experiments  # noqa: F401  (registers the built-in experiments)
    from pax_trainer import hparams, ownership, registry, summaries

    exp = registry.get(invocation.exp)()
    hparams.apply_overrides(exp, invocation.overrides, invocation.overrides_json, invocation.dna_json)
    from pax_trainer.executor import Executor, check_splits

    splits = check_splits(exp, invocation.mode)
    setup_jax.distributed_env()
    paths.check_job_log_dir(invocation.job_log_dir)
    if invocation.mode == "train":  # every host, before the gang forms; process 0 claims it later
        ownership.check(invocation.job_log_dir)
    if exp.init_from_checkpoint and invocation.mode == "train":
        _check_init_source(exp.init_from_checkpoint, invocation.job_log_dir)

    # After the checks: bad input prints its one error line and nothing else.
    changed = summaries.changed_hparams(exp.hparams_dict(), type(exp)().hparams_dict())
    env = setup_jax.read_env()  # read (and checked) once already in _main
    log.info(summaries.startup_line(invocation.exp, invocation.mode, invocation.job_log_dir, env, changed))
    setup_jax.initialize()
    watcher.install()  # again: jax.distributed's preemption notifier took SIGTERM over
    executor = Executor(exp, invocation.job_log_dir, status, watcher, splits)
    {"train": executor.train, "eval": executor.evaluate, "decode": executor.decode}[invocation.mode]()


def _check_init_source(source: str, job_log_dir: str) -> None:
    """Resolve init_from_checkpoint now (exit 2 at once if it has no checkpoint), unless the job has committed
    checkpoints of its own: it resumes from those and never reads the source, which may be gone by now."""
    from pax_trainer import checkpoints

    if not checkpoints.committed_steps(paths.join(job_log_dir, CHECKPOINTS_DIR)):
        checkpoints.resolve_init_checkpoint(source)


def _describe_search_space(invocation: TrainerInvocation) -> int:
    """--describe_search_space: the experiment's search space JSON on stdout and in the result file (a
    PaxSweep's describe pod reads it as the termination message)."""
    import pax_trainer.experiments  # noqa: F401  (registers the built-in experiments)
    from pax_trainer import hparams, registry

    text = hparams.describe_search_space(registry.get(invocation.exp)())
    print(text)
    _write_result_file(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the contract's exit code and writes the result file on every path."""
    status = TrainerResult(exit_reason=ExitReason.COMPLETED)  # the executor fills it in as the run goes
    # From the first line on, SIGTERM with nothing new to save ends the run at once (exit 42, a result).
    set_fatal_handler(lambda err: _report_fatal(err, status))
    watcher = PreemptionWatcher()
    watcher.install()
    try:
        return _main(argv, status, watcher)
    finally:
        watcher.take_over()
        watcher.uninstall()


def _main(argv: list[str] | None, status: TrainerResult, watcher: PreemptionWatcher) -> int:
    reason, message = ExitReason.COMPLETED, ""
    try:
        invocation = parse_args(argv)
        paths.prepare_environment()
        if invocation is None:  # --list
            import pax_trainer.experiments  # noqa: F401  (registers the built-in experiments)
            from pax_trainer import registry

            for name, cls in registry.registered().items():
                print(f"{name}\t{cls.__module__}.{cls.__qualname__}\t{cls.description}")
            return 0
        env = setup_jax.read_env()  # once, before anything runs: a malformed variable is exit 2
        watcher.set_grace(env.termination_grace_s)
        if invocation.describe_search_space:
            return _describe_search_space(invocation)
        storage.check_deadlines()
        _setup_logging(env.process_id)
        storage.quiet_late_completions()
        run(invocation, status, watcher)
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
    watcher.take_over()  # the outcome is decided: a SIGTERM from now on changes nothing
    code = int(EXIT_CODE_FOR_REASON[reason])
    _write_result(replace(status, exit_reason=reason, message=" ".join(message.split()), attempt=_attempt()))
    watcher.result_written(code)
    if reason == ExitReason.PREEMPTED:
        log.info("exiting %d: %s", code, message)
    sys.stdout.flush()
    sys.stderr.flush()
    if reason not in (ExitReason.COMPLETED, ExitReason.PREEMPTED) and _multi_process():
        # This host ends alone (its peers may be gone, or waiting in a collective for it): jax.distributed's
        # exit barrier would wait up to 300 s for them (a storage error then restarted the gang minutes late).
        os._exit(code)
    return code


def _report_fatal(err: TrainerError, status: TrainerResult) -> None:
    """A watchdog thread's exit (storage deadline, lost job_log_dir, SIGTERM with nothing to save): one line
    and the result file."""
    if isinstance(err, Preempted):
        log.info("exiting %d: %s", int(err.exit_code), err)
        if err.step is not None:
            status = replace(status, last_checkpoint_step=err.step)
    else:
        print(f"pax_trainer: error: {err}", file=sys.stderr)
    _write_result(
        replace(status, exit_reason=err.reason, message=" ".join(str(err).split()), attempt=_attempt())
    )


def _multi_process() -> bool:
    env = _env_for_reporting()
    return env is not None and env.num_processes > 1
