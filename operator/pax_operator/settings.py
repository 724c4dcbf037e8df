"""The operator's cadences and concurrency, defined once: each default, and the flag that overrides it."""

from __future__ import annotations

from dataclasses import dataclass

SCRAPE_INTERVAL_SECONDS = 10.0  # host 0's /metrics scrape (a changed answer wakes its job)
WORKERS = 16  # reconciles at a time: each waits on its requests, so more overlap (bench-operator)
KUBE_QPS = 1000.0  # client-side cap of the reconcilers' API requests per second (0: none); 200 was the
# bottleneck at 1,000 new jobs (8,000 requests / 200 = 40 s), the CPU binds first at 1,000
KUBE_BURST = 2000  # requests allowed at once above the QPS
STARTUP_DEADLINE_SECONDS = 300.0  # a gang pod that cannot start (image, config, unschedulable) fails the job


@dataclass(frozen=True)
class Tunable:
    """A setting that a command-line flag overrides; main passes its value to the handlers in kopf's memo."""

    name: str  # the memo key (and the flag: --name with dashes)
    default: int | float  # the flag's type is the default's
    help: str
    low: float  # the accepted range, inclusive
    high: float

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> int | float:
        """The flag's value, or ValueError naming the range (argparse reports it with the flag)."""
        value = type(self.default)(text)
        if not self.low <= value <= self.high:
            raise ValueError(f"{value} is outside [{self.low:g}, {self.high:g}]")
        return value


TUNABLES = (
    Tunable("workers", WORKERS, "concurrent reconciles", 1, 256),
    Tunable(
        "scrape_interval", SCRAPE_INTERVAL_SECONDS, "seconds between progress scrapes of host 0", 0.1, 3600
    ),
    Tunable("kube_qps", KUBE_QPS, "client-side limit of API requests per second (0: unlimited)", 0, 100_000),
    Tunable("kube_burst", KUBE_BURST, "API requests allowed at once", 1, 100_000),
    Tunable(
        "startup_deadline",
        STARTUP_DEADLINE_SECONDS,
        "seconds a gang pod may be unable to start (image, config, unschedulable) before the job fails",
        1,
        7 * 24 * 3600,
    ),
)
