"""SIGTERM -> checkpoint at the next step boundary all hosts agree on -> exit 42."""

from __future__ import annotations

import os
import signal
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionWatcher:
    """Records SIGTERM; `should_stop` turns the per-host flags into one decision all hosts share.

    jax.distributed installs its own SIGTERM notifier; ours replaces it (installed after initialize) so
    single- and multi-process runs behave the same. In multi-process runs `should_stop` is a collective
    (an all-gather of the flags): call it at the same steps on every host.
    """

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Handle SIGTERM from now on."""
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            os.write(2, b"pax_trainer: SIGTERM received: checkpointing at the next step boundary\n")
        self.requested = True

    def should_stop(self) -> bool:
        """True on every host if any host saw SIGTERM."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))
