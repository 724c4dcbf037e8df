"""SIGTERM -> checkpoint at the next step boundary all hosts agree on -> exit 42; with nothing new to save,
exit 42 at once.

Python runs a signal handler in the main thread between bytecodes only: a main thread blocked in a long C
call (jax.distributed.initialize waiting for peers, an XLA compile, a wait on the device, an eval) would act
on SIGTERM only once the call returned, often after the grace period and a SIGKILL. So the C-level handler
also writes to a wakeup fd (`signal.set_wakeup_fd`) that a watchdog thread reads at once:

- while the train loop holds steps newer than the newest save it started (`stepped` .. `saved`), the stop is
  the loop's: it saves at the next step boundary all hosts agree on and exits 42, as before;
- otherwise (start-up, restore, the first compile, an eval or decode after its save, eval/decode jobs),
  once the main thread has not reached a step boundary for `PATIENCE_S` (or twice its step time), waiting
  would save nothing new: the watchdog waits for a save in flight to commit (`watch_saves`), writes the
  result and exits 42 (`errors.exit_from_thread`).

The main thread calls `take_over` when it handles the stop (or the run's end) itself.

The pod's grace period (PAX_TERMINATION_GRACE_SECONDS, `set_grace`) bounds all of this: `stop_budget_s` after
the SIGTERM, whatever is still being waited for (a save in flight on stalled storage, the stop's own save
and its commit, a long call), a timer writes the result (`preempted`, that save not committed: the next
attempt resumes from the newest committed checkpoint) and exits 42 before the kubelet's SIGKILL. Nothing is
marked committed on that path: a checkpoint is committed only by its own marker, which a save cut short
never wrote. Without the variable only the storage deadlines bound the waits.

`python -m pax_trainer` blocks SIGTERM in its first line (`__main__`), before the imports: a SIGTERM then
stays pending (a container's PID 1 would otherwise drop it: no handler yet) until `install` unblocks it.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from pax_trainer.errors import Preempted, TrainerError, exit_from_thread

PATIENCE_S = 1.0  # a main thread that reached no step boundary for this long is in a long call
# Of the grace period, what the trainer keeps for writing its result and exiting (the process's teardown
# included): a fifth, at least MIN and at most MAX seconds.
GRACE_MARGIN_MIN_S, GRACE_MARGIN_MAX_S = 2.0, 10.0
_SIGTERM_LINE = b"pax_trainer: SIGTERM received: checkpointing at the next step boundary\n"


def _no_saves() -> int | None:
    return None


def stop_budget_s(grace_s: int) -> float:
    """Seconds after SIGTERM the trainer may still wait for a save, of a `grace_s`-second grace period."""
    margin = min(GRACE_MARGIN_MAX_S, max(GRACE_MARGIN_MIN_S, grace_s / 5))
    return max(0.0, grace_s - margin)


class PreemptionWatcher:
    """Records SIGTERM; `should_stop` turns the per-host flags into one decision all hosts share.

    jax.distributed installs its own SIGTERM notifier: `install` again after initialize so single- and
    multi-process runs behave the same. In multi-process runs `should_stop` is a collective (an all-gather
    of the flags): call it at the same steps on every host.
    """

    def __init__(self) -> None:
        self.requested = False
        self._announced = False
        self._cond = threading.Condition()
        self._unsaved = False  # train steps newer than the newest save started
        self._main_stops = False  # the main thread handles the stop (or the run's end) itself
        self._last_step_at = -math.inf  # monotonic time of the last step boundary
        self._step_s = 0.0  # time between the last two step boundaries
        self._settle: Callable[[], int | None] = _no_saves
        self._committed: Callable[[], int | None] = _no_saves  # newest step known committed, no storage call
        self._sigterm_at: float | None = None  # monotonic time the SIGTERM was first seen
        self._grace_s: int | None = None
        self._grace_lock = threading.RLock()
        self._grace_timer: threading.Timer | None = None
        self._exit_code: int | None = None  # the outcome, once main has written its result
        self._pipe: tuple[int, int] | None = None
        self._previous: tuple[object, int] | None = None  # SIGTERM handler and wakeup fd before install

    # --- signals -------------------------------------------------------------------------------------------
    def install(self) -> None:
        """Handle SIGTERM from now on (main thread only; again after jax.distributed.initialize)."""
        handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        if self._pipe is None:
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            self._pipe = (read_fd, write_fd)
            self._previous = (handler, signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False))
            threading.Thread(target=self._watch, args=(read_fd,), name="pax_sigterm", daemon=True).start()
        else:
            signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        # Held since `__main__`'s first line (if run so): a SIGTERM pending since then is handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})

    def uninstall(self) -> None:
        """Restore the handler and wakeup fd found by `install` and end the watchdog (in-process callers).

        An armed grace timer stays: the process's exit (jax.distributed's exit barrier) may still wait for
        peers, and the timer then ends it with the outcome main wrote (`result_written`)."""
        if self._pipe is None or self._previous is None:
            return
        handler, wakeup_fd = self._previous
        signal.signal(signal.SIGTERM, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(wakeup_fd)
        os.close(self._pipe[1])  # the watchdog reads end-of-file and returns
        self._pipe = self._previous = None

    def _announce(self) -> None:
        if not self._announced:
            self._announced = True
            os.write(2, _SIGTERM_LINE)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._seen()

    def _seen(self) -> None:
        """SIGTERM: record it (its time starts the grace period's clock) and say so once."""
        self.requested = True
        with self._grace_lock:  # reentrant: this runs as the main thread's signal handler too
            if self._sigterm_at is None:
                self._sigterm_at = time.monotonic()
            self._arm_grace_timer()
        self._announce()

    # --- the grace period -----------------------------------------------------------------------------------
    def set_grace(self, grace_s: int | None) -> None:
        """The pod's grace period (None: not told; waits are then bounded by the storage deadlines only)."""
        with self._grace_lock:
            self._grace_s = grace_s
            self._arm_grace_timer()

    def _arm_grace_timer(self) -> None:
        if self._grace_s is None or self._sigterm_at is None or self._grace_timer is not None:
            return
        budget = stop_budget_s(self._grace_s)
        os.write(
            2,
            f"pax_trainer: grace period {self._grace_s} s: a checkpoint save not committed"
            f" {budget:.0f} s after SIGTERM is abandoned (not committed)\n".encode(),
        )
        left = max(0.0, budget - (time.monotonic() - self._sigterm_at))
        self._grace_timer = threading.Timer(left, self._grace_ends)
        self._grace_timer.name = "pax_grace"
        self._grace_timer.daemon = True
        self._grace_timer.start()

    def _grace_ends(self) -> None:
        """The grace period is nearly over: exit 42 now, the save still being waited for not committed."""
        code = self._exit_code
        if code is not None:  # main has written the result (it may be in jax.distributed's exit barrier)
            os._exit(code)
        try:
            step = self._committed()
        except Exception:  # never let a lookup keep the process past its grace period
            step = None
        exit_from_thread(Preempted(step, saved=False, grace_s=self._grace_s))

    def result_written(self, exit_code: int) -> None:
        """main has written the result: if the grace period ends from now on, exit with `exit_code`."""
        self._exit_code = exit_code

    def _watch(self, read_fd: int) -> None:
        try:
            while signal.SIGTERM not in (data := os.read(read_fd, 64)):
                if not data:
                    return
            self._seen()
            self._stop_when_nothing_to_save()
        finally:
            os.close(read_fd)

    def _stop_when_nothing_to_save(self) -> None:
        with self._cond:
            while True:
                if self._main_stops:
                    return
                wait = max(PATIENCE_S, 2 * self._step_s) - (time.monotonic() - self._last_step_at)
                if not self._unsaved and wait <= 0:
                    break
                self._cond.wait(timeout=max(0.05, min(wait, 1.0)))
            try:  # the lock stays held: the train loop cannot start another step or save
                step = self._settle()
            except TrainerError as err:
                exit_from_thread(err)
            except Exception as err:
                exit_from_thread(TrainerError(f"preempted: waiting for the checkpoint in flight: {err}"))
            exit_from_thread(Preempted(step, saved=False))

    # --- the train loop's side ----------------------------------------------------------------------------
    def watch_saves(self, settle: Callable[[], int | None], committed: Callable[[], int | None]) -> None:
        """`settle()` waits for the save in flight, if any, and returns the newest committed step;
        `committed()` returns the newest step known committed at once, calling no storage."""
        with self._cond:
            self._settle, self._committed = settle, committed

    def stepped(self) -> None:
        """A train step was taken (not yet in a checkpoint)."""
        with self._cond:
            now = time.monotonic()
            if self._last_step_at > -math.inf:
                self._step_s = now - self._last_step_at
            self._last_step_at, self._unsaved = now, True
            self._cond.notify_all()

    def saved(self) -> None:
        """A save of the newest step was started: a stop from now on loses nothing once it commits."""
        with self._cond:
            self._unsaved = False
            self._cond.notify_all()

    def take_over(self) -> None:
        """The main thread handles the stop (or the run's end) itself: the watchdog stands down."""
        with self._cond:
            self._main_stops = True
            self._cond.notify_all()

    def should_stop(self) -> bool:
        """True on every host if any host saw SIGTERM."""
        import jax  # here, not at import: the watcher is installed before jax is imported

        if jax.process_count() == 1:
            return self.requested
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))
