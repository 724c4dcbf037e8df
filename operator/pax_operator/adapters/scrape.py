"""Host 0's Prometheus endpoint (contract metric names), scraped on the event loop, off the reconcile workers.

Every scrape is bounded in total time (connect + headers + body) and in bytes, so a trainer that trickles
its answer, never ends it, or sends gigabytes costs one short-lived coroutine, never a worker. Steps and
steps/s that are not usable numbers (NaN, ±Inf, beyond 2**53 for steps) are dropped with a warning; the loss
and eval metrics are results and keep NaN and ±Inf (a diverged trial is what PaxSweep's valueForNaN and
early stopping look for).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import aiohttp
import pax_contract as contract
from prometheus_client.parser import text_string_to_metric_families

from pax_operator.core.decide import Scrape

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_SECONDS = 2.0  # whole request, body included
MAX_SCRAPE_BYTES = 256 * 1024  # a trainer's /metrics is a few kB
MAX_CONCURRENT_SCRAPES = 64
MAX_STEP = 2**53  # steps beyond this are not exact in a float gauge (and would overflow the CRD's int64)
_INT_METRICS = (
    contract.METRIC_STEP,
    contract.METRIC_CHECKPOINT_STEP,
    contract.METRIC_TOTAL_STEPS,
    contract.METRIC_EVAL_STEP,
)
MAX_EVAL_METRICS = 32  # eval metrics kept per scrape (bounded status)
_FLOAT_METRICS = (contract.METRIC_LOSS, contract.METRIC_STEPS_PER_SEC)
_RESULT_METRICS = (contract.METRIC_LOSS,)  # may be NaN or ±Inf


_CONTRACT_METRICS = (*_INT_METRICS, *_FLOAT_METRICS, contract.METRIC_EVAL)
# A line that starts with a contract metric's name (or its # TYPE / # HELP), matched in C: a Python loop
# over 256 KiB of empty lines alone took 0.08 s.
_CONTRACT_LINE = re.compile(
    r"^(?:# (?:TYPE|HELP) )?(?:" + "|".join(map(re.escape, _CONTRACT_METRICS)) + r")[^\r\n]*", re.MULTILINE
)
MAX_CONTRACT_LINES = 256  # the contract's samples and their # TYPE / # HELP lines: a trainer serves ~30
MAX_CONTRACT_LINE_CHARS = 512  # a trainer's longest line is an eval sample (label <= 128 chars): ~170
MAX_CONTRACT_CHARS = 16 * 1024  # all kept lines; a trainer with MAX_EVAL_METRICS evals serves ~7 KiB


def contract_lines(text: str) -> str:
    """The lines about the contract's metrics, at most MAX_CONTRACT_LINES of at most MAX_CONTRACT_LINE_CHARS
    (longer ones are dropped), MAX_CONTRACT_CHARS in all. The Prometheus parser is pure Python on the event
    loop, its cost grows with labels and escapes rather than lines, and a job's host 0 may serve anything:
    256 lines of empty labels (217 KiB) took 0.27 s, 16 KiB of them takes ~0.02 s."""
    kept: list[str] = []
    size = 0
    for match in _CONTRACT_LINE.finditer(text):
        line = match.group()
        if len(line) > MAX_CONTRACT_LINE_CHARS:
            continue
        size += len(line) + 1
        if size > MAX_CONTRACT_CHARS or len(kept) == MAX_CONTRACT_LINES:
            break
        kept.append(line)
    return "\n".join(kept) + "\n"


def parse_metrics(text: str) -> Scrape:
    """Pick the contract's gauges out of Prometheus text exposition; unusable values are left out and
    named in `Scrape.ignored`."""
    values: dict[str, float] = {}
    evals: dict[str, float] = {}
    wanted = set(_INT_METRICS + _FLOAT_METRICS + (contract.METRIC_EVAL_STEP,))
    for family in text_string_to_metric_families(contract_lines(text)):
        for sample in family.samples:
            if sample.name in wanted:
                values.setdefault(sample.name, sample.value)
            elif sample.name == contract.METRIC_EVAL and len(evals) < MAX_EVAL_METRICS:
                label = sample.labels.get(contract.METRIC_EVAL_LABEL, "")
                if label and len(label) <= 128:
                    evals.setdefault(label, sample.value)
    ignored = tuple(
        f"{name}={value}"
        for name, value in values.items()
        if name not in _RESULT_METRICS
        and (not math.isfinite(value) or (name in _INT_METRICS and abs(value) > MAX_STEP))
    )
    usable = {name: value for name, value in values.items() if f"{name}={value}" not in ignored}

    def as_int(name: str) -> int | None:
        return None if name not in usable else int(usable[name])

    return Scrape(
        step=as_int(contract.METRIC_STEP),
        last_checkpoint_step=as_int(contract.METRIC_CHECKPOINT_STEP),
        loss=usable.get(contract.METRIC_LOSS),
        steps_per_second=usable.get(contract.METRIC_STEPS_PER_SEC),
        num_train_steps=as_int(contract.METRIC_TOTAL_STEPS),
        ignored=ignored,
        eval_step=as_int(contract.METRIC_EVAL_STEP),
        eval_metrics=tuple(sorted(evals.items())),
    )


async def scrape_host(
    session: aiohttp.ClientSession,
    pod_ip: str,
    port: int = contract.METRICS_PORT,
    *,
    timeout: float = SCRAPE_TIMEOUT_SECONDS,
    max_bytes: int = MAX_SCRAPE_BYTES,
) -> Scrape | None:
    """Scrape one host; None when it does not answer in time, answers too much, or not in the format
    (not an error: the trainer may still be starting)."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    url = f"http://{host}:{port}/metrics"
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    return None
                body = bytearray()
                while chunk := await response.content.read(64 * 1024):  # a trickle is cut by the deadline
                    body += chunk
                    if len(body) > max_bytes:
                        log.warning("%s: more than %d bytes, ignored", url, max_bytes)
                        return None
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
        return None
    try:
        return parse_metrics(bytes(body).decode("utf-8", errors="replace"))
    except ValueError as err:
        log.warning("%s: not Prometheus text (%s), ignored", url, err)
        return None


@dataclass(frozen=True)
class _Target:
    attempt: int
    pod_ip: str


@dataclass
class _Latest:
    attempt: int
    scrape: Scrape


@dataclass
class Scraper[K: Hashable]:
    """Scrapes host 0 of every tracked job every `interval` seconds; wakes the job (`on_change`) when what
    it serves changed. Lives on the event loop: `track`/`untrack`/`latest` must be called from it."""

    on_change: Callable[[K], None]
    interval: float = 10.0
    port: int = contract.METRICS_PORT
    timeout: float = SCRAPE_TIMEOUT_SECONDS
    max_bytes: int = MAX_SCRAPE_BYTES
    concurrency: int = MAX_CONCURRENT_SCRAPES
    _targets: dict[K, _Target] = field(default_factory=dict)
    _tasks: dict[K, asyncio.Task[None]] = field(default_factory=dict)
    _latest: dict[K, _Latest] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _slots: asyncio.Semaphore | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def track(self, key: K, attempt: int, pod_ip: str) -> None:
        """Scrape `pod_ip` for `key`'s gang `attempt` (no-op when already doing so)."""
        target = _Target(attempt, pod_ip)
        if self._targets.get(key) == target:
            return
        self.untrack(key, keep_latest=True)
        self._targets[key] = target
        self._tasks[key] = asyncio.get_running_loop().create_task(
            self._loop(key, target), name=f"scrape-{key}"
        )

    def untrack(self, key: K, *, keep_latest: bool = True) -> None:
        """Stop looking at `key`'s host 0. The latest answer is kept (or dropped), without `checked_at`: no
        look is coming (host 0's trainer ended), so a hang is judged on that answer alone."""
        self._targets.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
        latest = self._latest.pop(key, None)
        if keep_latest and latest is not None:
            self._latest[key] = _Latest(latest.attempt, replace(latest.scrape, checked_at=None))

    def latest(self, key: K, attempt: int) -> Scrape | None:
        """The newest answer of host 0 of gang `attempt`, if it has answered."""
        latest = self._latest.get(key)
        return latest.scrape if latest is not None and latest.attempt == attempt else None

    def tracking(self) -> int:
        return len(self._targets)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self.untrack(key)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _loop(self, key: K, target: _Target) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=True)
            self._session = aiohttp.ClientSession(connector=connector, trust_env=False)  # pod IPs: no proxy
            self._slots = asyncio.Semaphore(self.concurrency)
        assert self._slots is not None
        while True:
            looked = self.clock()
            async with self._slots:
                scrape = await scrape_host(
                    self._session, target.pod_ip, self.port, timeout=self.timeout, max_bytes=self.max_bytes
                )
            before = self._latest.get(key)
            if scrape is None and before is not None and before.attempt == target.attempt:
                # Silent after answering before: a look all the same (a hang shows no progress either way).
                self._latest[key] = _Latest(before.attempt, replace(before.scrape, checked_at=looked))
            if scrape is not None:
                scrape = replace(scrape, checked_at=looked)
                if scrape.ignored and (before is None or before.scrape.ignored != scrape.ignored):
                    log.warning("%s: ignoring unusable metric values: %s", key, ", ".join(scrape.ignored))
                self._latest[key] = _Latest(target.attempt, scrape)
                if before is None or before.attempt != target.attempt or before.scrape != scrape:
                    self.on_change(key)
            await asyncio.sleep(self.interval)
