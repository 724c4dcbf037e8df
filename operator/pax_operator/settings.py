"""The operator's cadences and concurrency, defined once: each default, and the flag that overrides it."""

from __future__ import annotations

from dataclasses import dataclass

SCRAPE_INTERVAL_SECONDS = 10.0  # host 0's /metrics scrape (a changed answer wakes its job)
WORKERS = 4  # reconciles at a time (the work queue's workers)
KUBE_QPS = 200.0  # client-side limit of the reconcilers' API requests per second (0: none)
KUBE_BURST = 400  # requests allowed at once above the QPS
STARTUP_DEADLINE_SECONDS = 300.0  # a gang pod that cannot start (image, config, unschedulable) fails the job


@dataclass(frozen=True)
class Tunable:
    """A setting that a command-line flag overrides; main passes its value to the handlers in kopf's memo."""

    name: str  # the memo key (and the flag: --name with dashes)
    default: int | float  # the flag's type is the default's
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


TUNABLES = (
    Tunable("workers", WORKERS, "concurrent reconciles"),
    Tunable("scrape_interval", SCRAPE_INTERVAL_SECONDS, "seconds between progress scrapes of host 0"),
    Tunable("kube_qps", KUBE_QPS, "client-side limit of API requests per second (0: unlimited)"),
    Tunable("kube_burst", KUBE_BURST, "API requests allowed at once"),
    Tunable(
        "startup_deadline",
        STARTUP_DEADLINE_SECONDS,
        "seconds a gang pod may be unable to start (image, config, unschedulable) before the job fails",
    ),
)
