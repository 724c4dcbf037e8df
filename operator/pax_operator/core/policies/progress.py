"""Progress: fold host 0's latest scrape into the status, enter Running when every host runs, and restart
a gang whose host 0 answers scrapes but whose step stalls for hangTimeoutSeconds."""

from __future__ import annotations

from pax_contract import Outcome

from pax_operator.core.observe import HostOutcome
from pax_operator.core.plan import (
    SETTLE_REQUEUE_SECONDS,
    STARTUP_GRACE_SECONDS,
    Event,
    clear,
    condition,
    format_time,
    parse_time,
    set_condition,
)
from pax_operator.core.policies.context import Pass, restart_or_fail
from pax_operator.spec import ConditionType, Phase


def progress(p: Pass) -> bool:
    _apply_scrape(p)
    _tensorboard_url(p)
    _enter_running(p)
    return _hang(p)


def _apply_scrape(p: Pass) -> None:
    scrape = p.observed.scrape
    if scrape is None:
        return
    progress = p.status.progress
    if progress.step_at_restart is not None and scrape.last_checkpoint_step is not None:
        progress.steps_lost += max(0, progress.step_at_restart - max(scrape.last_checkpoint_step, 0))
        progress.step_at_restart = None
    if scrape.step is not None and (progress.step is None or scrape.step > progress.step):
        progress.last_progress_time = format_time(p.observed.now)
    if scrape.step is not None:
        progress.step = scrape.step
    if scrape.last_checkpoint_step is not None and scrape.last_checkpoint_step >= 0:
        progress.last_checkpoint_step = scrape.last_checkpoint_step
    if scrape.steps_per_second is not None:
        progress.steps_per_second = round(scrape.steps_per_second, 4)
    if scrape.num_train_steps is not None:
        progress.num_train_steps = scrape.num_train_steps
    if scrape.loss is not None:
        progress.metrics = progress.metrics | {"train/loss": scrape.loss}
    if scrape.eval_metrics:  # the latest evaluation, with its step (PaxSweep reads both)
        progress.metrics = progress.metrics | dict(scrape.eval_metrics)
    if scrape.eval_step is not None:
        progress.eval_step = scrape.eval_step


def _tensorboard_url(p: Pass) -> None:
    """Where the current gang's TensorBoard sidecar answers (host 0's pod IP): users need not look it up."""
    tensorboard = p.observed.spec.tensorboard
    host0 = p.current.get(0)
    if not tensorboard.enabled or host0 is None or not host0.pod_ip:
        return
    p.status.tensorboard_url = f"http://{host0.pod_ip}:{tensorboard.port}/"


def _enter_running(p: Pass) -> None:
    status, now, current = p.status, p.observed.now, p.current
    all_up = all(p.outcomes.get(h) is not None or current[h].phase == "Running" for h in range(p.hosts))
    if not all_up or status.phase is Phase.RUNNING:
        return
    message = f"all {p.hosts} hosts running (attempt {status.restart_attempt})"
    status.phase = Phase.RUNNING
    status.progress.last_progress_time = format_time(now)
    clear(status, (ConditionType.RESTARTING, ConditionType.STARTUP_BLOCKED), "Running", message, now)
    set_condition(status, ConditionType.RUNNING, True, "AllHostsRunning", message, now)
    p.plan.events.append(Event("Normal", "Running", message))


def _hang(p: Pass) -> bool:
    status, now, spec = p.status, p.observed.now, p.observed.spec
    if status.phase is not Phase.RUNNING:
        return False
    last = parse_time(status.progress.last_progress_time) or now
    stalled = (now - last).total_seconds()
    running = condition(status, ConditionType.RUNNING)
    running_since = parse_time(running.last_transition_time) if running is not None else None
    # Before a gang's first step (start-up, compilation, restore) allow at least STARTUP_GRACE_SECONDS.
    starting = running_since is not None and last <= running_since
    timeout = max(spec.hang_timeout_seconds, STARTUP_GRACE_SECONDS) if starting else spec.hang_timeout_seconds
    if stalled >= timeout:
        if not p.observed.metrics_answered:
            return False  # silence is not a hang; host 0's first answer wakes the job
        scrape = p.observed.scrape
        looked = scrape.checked_at if scrape is not None and scrape.checked_at is not None else now
        if (looked - last).total_seconds() < timeout:
            # No look at host 0 since the clock ran out (scrapes come every --scrape-interval, which may be
            # longer than hangTimeoutSeconds): the next one tells; an unchanged answer wakes nobody.
            p.plan.requeue(SETTLE_REQUEUE_SECONDS)
            return False
        at = "before its first step" if status.progress.step is None else f"at step {status.progress.step}"
        message = (
            f"host 0 made no step progress {at} for {int(stalled)}s "
            f"(hangTimeoutSeconds={spec.hang_timeout_seconds}; its log shows where it waits)"
        )
        restart_or_fail(p, HostOutcome(0, Outcome.FAILED, "Hang", message))
        return True
    # New scrapes wake the job themselves; this look is for the hang clock running out.
    p.plan.requeue(timeout - stalled)
    return False
