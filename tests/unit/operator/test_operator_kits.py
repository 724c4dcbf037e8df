"""Metrics parsing, the work queue, and the entry point's flags."""

from __future__ import annotations

import asyncio
import threading
import time

from pax_operator.kits.scrape import parse_metrics, scrape_host
from pax_operator.main import parse_args
from pax_operator.workqueue import WorkQueue

METRICS = """\
# HELP pax_train_step Last completed train step
# TYPE pax_train_step gauge
pax_train_step 120.0
# TYPE pax_last_checkpoint_step gauge
pax_last_checkpoint_step 100.0
# TYPE pax_train_loss gauge
pax_train_loss 2.25
# TYPE pax_steps_per_second gauge
pax_steps_per_second 3.5
# TYPE pax_num_train_steps gauge
pax_num_train_steps 1000.0
# TYPE python_gc_objects_collected counter
python_gc_objects_collected_total{generation="0"} 5.0
"""


def test_parse_metrics_reads_contract_gauges() -> None:
    scrape = parse_metrics(METRICS)
    assert (scrape.step, scrape.last_checkpoint_step, scrape.num_train_steps) == (120, 100, 1000)
    assert (scrape.loss, scrape.steps_per_second) == (2.25, 3.5)
    assert parse_metrics("").step is None


def test_scrape_of_silent_host_is_none() -> None:
    assert scrape_host("127.0.0.1", port=1) is None


def test_work_queue_serialises_a_key_and_requeues() -> None:
    calls: list[tuple[str, str]] = []
    active = threading.Semaphore(1)
    overlaps: list[bool] = []

    def reconcile(namespace: str, name: str) -> float | None:
        overlaps.append(not active.acquire(blocking=False))
        time.sleep(0.02)
        calls.append((namespace, name))
        active.release()
        return 0.05 if len(calls) < 4 else None

    async def scenario() -> None:
        queue = WorkQueue(reconcile, workers=3)
        queue.start()
        for _ in range(5):
            queue.add(("ns", "a"))
        await asyncio.sleep(0.6)
        await queue.stop()

    asyncio.run(scenario())
    assert 4 <= len(calls) <= 6 and not any(overlaps)


def test_work_queue_backs_off_on_errors() -> None:
    calls: list[float] = []

    def reconcile(namespace: str, name: str) -> float | None:
        calls.append(time.monotonic())
        raise RuntimeError("apiserver down")

    async def scenario() -> None:
        queue = WorkQueue(reconcile, workers=1)
        queue.start()
        queue.add(("ns", "a"))
        await asyncio.sleep(1.2)
        await queue.stop()

    asyncio.run(scenario())
    assert 2 <= len(calls) <= 3  # 0 s, +1 s, (+2 s)


def test_cli_defaults_to_all_namespaces() -> None:
    args = parse_args([])
    assert args.namespace == [] and args.liveness.startswith("http://127.0.0.1:")
    assert parse_args(["-n", "a", "-n", "b"]).namespace == ["a", "b"]
