"""jax.distributed from the contract's environment (gloo collectives on CPU)."""

from __future__ import annotations

import logging
import os

from pax_contract import EnvError, TrainerEnv

from pax_trainer.errors import ConfigError

log = logging.getLogger(__name__)


def read_env() -> TrainerEnv:
    """The contract's environment (pax_contract.TrainerEnv), read the one way: a malformed or inconsistent
    value is a ConfigError naming the variable (exit 2)."""
    try:
        return TrainerEnv.from_env(os.environ)
    except EnvError as err:
        raise ConfigError(str(err)) from None


def distributed_env() -> tuple[str | None, int, int]:
    """(coordinator address, number of processes, process id) from the env; ConfigError if malformed."""
    env = read_env()
    return env.coordinator_address, env.num_processes, env.process_id


def initialize() -> None:
    """Join the gang when JAX_NUM_PROCESSES > 1; the coordinator (process 0) binds to POD_IP if set."""
    import jax  # here: main installs the SIGTERM watcher before the seconds that importing jax takes

    env = read_env()
    address, num, pid = env.coordinator_address, env.num_processes, env.process_id
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if num == 1:
        return
    bind = None
    pod_ip = env.pod_ip
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
