"""Read host 0's Prometheus endpoint (contract metric names) into a Scrape."""

from __future__ import annotations

import urllib.request

import pax_contract as contract
from prometheus_client.parser import text_string_to_metric_families

from pax_operator.core.decide import Scrape

SCRAPE_TIMEOUT_SECONDS = 2.0
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # pod IPs never go through a proxy


def parse_metrics(text: str) -> Scrape:
    """Pick the contract's gauges out of Prometheus text exposition."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)

    def as_int(name: str) -> int | None:
        return None if name not in values else int(values[name])

    return Scrape(
        step=as_int(contract.METRIC_STEP),
        last_checkpoint_step=as_int(contract.METRIC_CHECKPOINT_STEP),
        loss=values.get(contract.METRIC_LOSS),
        steps_per_second=values.get(contract.METRIC_STEPS_PER_SEC),
        num_train_steps=as_int(contract.METRIC_TOTAL_STEPS),
    )


def scrape_host(pod_ip: str, port: int = contract.METRICS_PORT) -> Scrape | None:
    """Scrape one host; None when it does not answer (not an error: the trainer may still be starting)."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    try:
        with _OPENER.open(f"http://{host}:{port}/metrics", timeout=SCRAPE_TIMEOUT_SECONDS) as response:
            return parse_metrics(response.read().decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return None
