"""jax.distributed from the contract's environment (gloo collectives on CPU)."""

from __future__ import annotations

import logging
import os

import jax
from pax_contract import ENV_COORDINATOR_ADDRESS, ENV_NUM_PROCESSES, ENV_POD_IP, ENV_PROCESS_ID

from pax_trainer.errors import ConfigError

log = logging.getLogger(__name__)


def distributed_env() -> tuple[str | None, int, int]:
    """(coordinator address, number of processes, process id) from the env; ConfigError if malformed."""
    try:
        num = int(os.environ.get(ENV_NUM_PROCESSES) or 1)
        pid = int(os.environ.get(ENV_PROCESS_ID) or 0)
    except ValueError:
        raise ConfigError(f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} must be integers") from None
    address = os.environ.get(ENV_COORDINATOR_ADDRESS) or None
    if num < 1 or not 0 <= pid < num:
        raise ConfigError(f"{ENV_PROCESS_ID}={pid} is not in [0, {ENV_NUM_PROCESSES}={num})")
    if num > 1 and not address:
        raise ConfigError(f"{ENV_NUM_PROCESSES}={num} needs {ENV_COORDINATOR_ADDRESS}")
    return address, num, pid


def process_id_from_env() -> int:
    """This host's index before jax is initialised (0 when unset or malformed)."""
    try:
        return int(os.environ.get(ENV_PROCESS_ID) or 0)
    except ValueError:
        return 0


def initialize() -> None:
    """Join the gang when JAX_NUM_PROCESSES > 1; the coordinator (process 0) binds to POD_IP if set."""
    address, num, pid = distributed_env()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if num == 1:
        return
    bind = None
    pod_ip = os.environ.get(ENV_POD_IP)
    if pod_ip and address:
        bind = f"{pod_ip}:{address.rsplit(':', 1)[-1]}"
    log.info("jax.distributed: process %d of %d, coordinator %s", pid, num, address)
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num,
        process_id=pid,
        coordinator_bind_address=bind,
        initialization_timeout=300,
    )
