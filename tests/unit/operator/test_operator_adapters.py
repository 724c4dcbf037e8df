"""Metrics parsing and bounded scrapes, the work queue (driven by a fake clock), the entry point's flags."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
import urllib3
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException
from pax_operator.adapters.kube import Clients, api_message
from pax_operator.adapters.scrape import (
    MAX_CONTRACT_CHARS,
    MAX_CONTRACT_LINE_CHARS,
    MAX_CONTRACT_LINES,
    MAX_EVAL_METRICS,
    Scraper,
    contract_lines,
    parse_metrics,
    scrape_host,
)
from pax_operator.main import parse_args
from pax_operator.workqueue import RateLimiter, WorkQueue

from tests.threaded_server import ThreadedServer

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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parse_metrics_reads_contract_gauges() -> None:
    scrape = parse_metrics(METRICS)
    assert (scrape.step, scrape.last_checkpoint_step, scrape.num_train_steps) == (120, 100, 1000)
    assert (scrape.loss, scrape.steps_per_second, scrape.ignored) == (2.25, 3.5, ())
    assert parse_metrics("").step is None


def test_only_a_bounded_number_of_contract_lines_reach_the_parser() -> None:
    """The parser is pure Python on the event loop and host 0 may serve 256 KiB of anything."""
    evals = "".join(f'pax_eval_metric{{metric="m{i}"}} 1.0\n' for i in range(5000))
    body = "# TYPE pax_train_step gauge\npax_train_step 5\n" + "python_gc_objects 3\n" * 5000 + evals
    kept = contract_lines(body).splitlines()
    assert len(kept) == MAX_CONTRACT_LINES and not any(line.startswith("python_") for line in kept)
    scrape = parse_metrics(body)
    assert scrape.step == 5 and len(scrape.eval_metrics) == MAX_EVAL_METRICS


def test_the_parser_gets_a_bounded_amount_of_text_not_just_of_lines() -> None:
    """Its cost grows with labels and escapes: 256 label-heavy lines (217 KiB) took 0.27 s of the loop."""
    labels = ",".join(f'a{i}=""' for i in range(120))
    heavy = f"pax_train_step{{{labels}}} 1\n" * 256
    long_line = 'pax_train_loss{a="' + "x" * MAX_CONTRACT_LINE_CHARS + '"} 9\n'
    kept = contract_lines(long_line + "pax_train_loss 2\n" + heavy)
    assert len(kept) <= MAX_CONTRACT_CHARS and "x" * 100 not in kept  # the over-long line is dropped
    assert kept.startswith("pax_train_loss 2\n")
    assert parse_metrics(long_line + "pax_train_loss 2\n" + heavy).loss == 2.0
    started = time.perf_counter()
    parse_metrics(heavy)
    assert time.perf_counter() - started < 0.2  # ~0.02 s; the budget is loose for a loaded machine


def test_what_our_trainer_serves_is_kept_whole() -> None:
    from pax_trainer.progress import Progress
    from prometheus_client import generate_latest

    gauges = Progress(total_steps=100)
    gauges.update(40, loss=1.5, checkpoint_step=30)
    gauges.evaluated(40, {f"eval_test/{i:03d}".ljust(128, "m"): 0.5 for i in range(MAX_EVAL_METRICS)})
    text = generate_latest(gauges.registry).decode()
    assert contract_lines(text) == text
    scrape = parse_metrics(text)
    assert (scrape.step, scrape.last_checkpoint_step, scrape.eval_step) == (40, 30, 40)
    assert len(scrape.eval_metrics) == MAX_EVAL_METRICS


def test_non_finite_and_huge_steps_are_ignored_not_raised_but_a_diverged_loss_is_kept() -> None:
    text = (
        "pax_train_step +Inf\npax_train_loss NaN\npax_last_checkpoint_step 1e30\npax_steps_per_second 2.0\n"
        'pax_eval_metric{metric="eval_test/loss"} +Inf\n'
    )
    scrape = parse_metrics(text)
    assert (scrape.step, scrape.last_checkpoint_step, scrape.steps_per_second) == (None, None, 2.0)
    assert scrape.loss is not None and math.isnan(scrape.loss)
    assert scrape.eval_metrics == (("eval_test/loss", math.inf),)
    assert {name.split("=")[0] for name in scrape.ignored} == {"pax_train_step", "pax_last_checkpoint_step"}
    assert parse_metrics("pax_train_loss 1e30\n").loss == 1e30  # a huge loss is still a number


class SlowServer(ThreadedServer):
    """A server on 127.0.0.1 answering /metrics one byte per `pause` seconds, or `size` bytes at once."""

    def __init__(self, *, pause: float = 0.0, size: int = 0) -> None:
        self.pause, self.size = pause, size
        super().__init__(("127.0.0.1", 0))

    def answer(self, conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        if self.size:
            conn.sendall(b"# " + b"x" * self.size + b"\n")
            return
        for byte in METRICS.encode():
            if self.stopped.wait(self.pause):
                return
            conn.sendall(bytes([byte]))


@pytest.fixture
def trickle() -> Iterator[SlowServer]:
    server = SlowServer(pause=1.0)
    yield server
    server.close()


async def _scrape(port: int, **kwargs: float) -> tuple[object, float]:
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        result = await scrape_host(session, "127.0.0.1", port, **kwargs)  # type: ignore[arg-type]
        return result, time.monotonic() - started


def test_a_trickling_host_is_cut_at_the_total_deadline(trickle: SlowServer) -> None:
    result, took = asyncio.run(_scrape(trickle.port, timeout=0.5))
    assert result is None and took < 5  # bounded by the deadline, not by the 300-byte trickle (300 s)


def test_an_oversized_answer_is_dropped() -> None:
    server = SlowServer(size=300_000)
    try:
        result, _ = asyncio.run(_scrape(server.port, max_bytes=100_000))
        assert result is None
        result, _ = asyncio.run(_scrape(server.port, max_bytes=1_000_000))
        assert result is not None and result.step is None  # a comment only: parsed, nothing usable
    finally:
        server.close()


def test_scrape_of_a_silent_host_is_none() -> None:
    assert asyncio.run(_scrape(1))[0] is None


def test_scraper_wakes_the_job_on_change_only() -> None:
    server = SlowServer()
    woken: list[str] = []

    async def scenario() -> None:
        scraper: Scraper[str] = Scraper(on_change=woken.append, interval=0.05, port=server.port)
        scraper.track("job", 3, "127.0.0.1")
        for _ in range(100):
            if scraper.latest("job", 3) is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # several more scrapes of the same answer
        assert scraper.latest("job", 3) is not None and scraper.latest("job", 2) is None
        await scraper.stop()

    try:
        asyncio.run(scenario())
    finally:
        server.close()
    assert woken == ["job"]


def test_scraper_records_every_look_answered_unchanged_or_silent() -> None:
    """The hang rule needs to know when host 0 was last looked at, not only when its answer changed."""
    server = SlowServer()
    woken: list[str] = []
    looks: list[object] = []

    async def scenario() -> None:
        scraper: Scraper[str] = Scraper(on_change=woken.append, interval=0.05, port=server.port)
        scraper.track("job", 3, "127.0.0.1")
        await wait_for(lambda: scraper.latest("job", 3) is not None)
        first = scraper.latest("job", 3)
        await wait_for(lambda: scraper.latest("job", 3).checked_at > first.checked_at)  # type: ignore[union-attr]
        looks.append(scraper.latest("job", 3))
        server.close()  # host 0 goes silent: its last answer stays, the looks go on
        answered = scraper.latest("job", 3).checked_at  # type: ignore[union-attr]
        await wait_for(lambda: scraper.latest("job", 3).checked_at > answered)  # type: ignore[union-attr]
        looks.append(scraper.latest("job", 3))
        scraper.untrack("job")  # no more looks coming (host 0's trainer ended): judged on its last answer
        assert scraper.latest("job", 3) == looks[1] and scraper.latest("job", 3).checked_at is None  # type: ignore[union-attr]
        await scraper.stop()

    async def wait_for(check: Callable[[], bool]) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("not within 10 s")

    try:
        asyncio.run(scenario())
    finally:
        server.close()
    assert woken == ["job"] and looks[0] == looks[1]  # same answer: no wake, equal but for checked_at


# -- the work queue -----------------------------------------------------------------------------------
def test_delays_are_promoted_when_due_and_the_earliest_request_wins() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(lambda key: None, clock=clock)
        queue.add("a", 10)
        queue.add("a", 5)  # earlier: wins
        queue.add("a", 20)  # later: ignored
        queue.add("b", 7)
        assert queue.promote_due() == pytest.approx(5) and queue.depth() == 0
        clock.now += 5
        assert queue.promote_due() == pytest.approx(2) and queue.depth() == 1
        clock.now += 2
        assert queue.promote_due() is None and queue.depth() == 2 and queue.delayed() == 0
        queue.add("c", 3)
        queue.forget("c")
        clock.now += 3
        assert queue.promote_due() is None and queue.depth() == 2

    asyncio.run(scenario())


def test_the_delay_heap_stays_bounded_when_a_far_future_requeue_is_woken_again_and_again() -> None:
    """A key requeued 68 years out (hangTimeoutSeconds 2147483647) and woken by every scrape left each old
    heap entry behind: superseded entries were dropped only on reaching the top, which that one never
    does (a simulated day: 8,690 entries, ~1 MiB). The heap is rebuilt once stale entries dominate."""
    clock = FakeClock()

    def reconcile(key: str) -> float:
        return 2147483647.0 if key == "hung" else 1800.0

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(reconcile, clock=clock)
        for j in range(50):
            queue.add(f"job{j}", 1 + j * 36)
        for _ in range(8640):  # a day of scrapes, 10 s apart, each waking "hung"
            clock.now += 10
            queue.add("hung")
            queue.promote_due()
            while queue.depth():
                await queue.process(queue._ready.get_nowait())
            assert len(queue._heap) <= 2 * queue.delayed() + 65
        assert queue.delayed() == 51 and queue.due_in("hung") == pytest.approx(2147483647.0)
        for j in range(50):
            queue.forget(f"job{j}")
        assert len(queue._heap) <= 2 * queue.delayed() + 64  # forgetting compacts too
        assert queue.promote_due() == pytest.approx(2147483647.0) and queue.depth() == 0
        queue.forget("hung")
        assert queue.promote_due() is None and queue.delayed() == 0 and queue.depth() == 0

    asyncio.run(scenario())


def test_a_key_added_while_it_runs_is_reconciled_again_after_never_concurrently() -> None:
    running: list[str] = []
    overlaps: list[bool] = []
    calls: list[str] = []

    async def reconcile(name: str) -> float | None:
        overlaps.append(name in running)
        running.append(name)
        await asyncio.sleep(0)
        calls.append(name)
        running.remove(name)
        return None

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(reconcile, workers=3, clock=FakeClock())
        queue.add("a")
        first = asyncio.create_task(queue.process("a"))
        await asyncio.sleep(0)  # inside the reconcile now
        queue.add("a")  # dirty: runs again after, not beside
        await first
        assert queue.depth() == 1
        await queue.process("a")
        assert queue.depth() == 0

    asyncio.run(scenario())
    assert calls == ["a", "a"] and not any(overlaps)


def test_plain_reconcile_functions_run_in_a_thread() -> None:
    seen: list[tuple[tuple[str, str], bool]] = []

    def reconcile(key: tuple[str, str]) -> float | None:
        seen.append((key, threading.current_thread() is threading.main_thread()))
        return 30.0

    async def scenario() -> None:
        clock = FakeClock()
        queue: WorkQueue[tuple[str, str]] = WorkQueue(reconcile, clock=clock)
        await queue.process(("ns", "a"))
        assert queue.due_in(("ns", "a")) == pytest.approx(30)

    asyncio.run(scenario())
    assert seen == [(("ns", "a"), False)]


def test_failures_back_off_per_key_exponentially_and_success_resets() -> None:
    clock = FakeClock()
    outcomes = iter(
        [RuntimeError("down"), RuntimeError("down"), RuntimeError("down"), None, RuntimeError("x")]
    )

    def reconcile(key: str) -> float | None:
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome
        return None

    async def scenario() -> list[float | None]:
        limiter = RateLimiter(base=0.5, cap=60, qps=1000, burst=1000, clock=clock)
        queue: WorkQueue[str] = WorkQueue(reconcile, limiter=limiter, clock=clock)
        delays = []
        for _ in range(5):
            await queue.process("a")
            delays.append(queue.due_in("a"))
            if delays[-1] is not None:
                queue.add("a")  # due now: take it at once
        return delays

    assert asyncio.run(scenario()) == [0.5, 1.0, 2.0, None, 0.5]


def test_rate_limiter_caps_per_key_and_bounds_all_retries_with_a_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(base=0.1, cap=0.4, qps=2, burst=2, clock=clock)
    delays = [limiter.when("a") for _ in range(4)]
    assert delays == pytest.approx([0.1, 0.2, 0.5, 1.0])  # per key 0.1, 0.2, 0.4 (cap), 0.4; bucket 2/s
    assert limiter.failures("a") == 4
    limiter.forget("a")
    assert limiter.failures("a") == 0
    assert limiter.when("b") == pytest.approx(1.5)  # a new key, but the bucket is in debt: 5th retry at 2/s
    clock.now += 60
    assert limiter.when("c") == pytest.approx(0.1)  # refilled


def test_cli_defaults_to_all_namespaces_and_takes_client_limits() -> None:
    args = parse_args([])
    assert args.namespace == [] and args.liveness.startswith("http://127.0.0.1:")
    assert parse_args(["-n", "a", "-n", "b"]).namespace == ["a", "b"]
    limits = parse_args(["--kube-qps", "50", "--kube-burst", "80", "--workers", "8"])
    assert (limits.kube_qps, limits.kube_burst, limits.workers) == (50, 80, 8)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], r"argument --workers: 0 is outside \[1, 256\]"),
        (["--workers", "100000"], "argument --workers: 100000 is outside"),
        (["--kube-burst", "-5"], "argument --kube-burst: -5 is outside"),
        (["--scrape-interval", "nan"], "argument --scrape-interval: nan is outside"),
        (["--startup-deadline", "1e12"], "argument --startup-deadline: 1000000000000.0 is outside"),
        (["--workers", "many"], "argument --workers: invalid literal"),
        (["-n", "team-*"], "argument -n/--namespace: 'team-\\*' is not a namespace name"),
        (["-n", "Team"], "argument -n/--namespace: 'Team' is not a namespace name"),
    ],
)
def test_cli_refuses_values_out_of_range(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"kind": "Status", "message": "pods \\"a-0\\" is forbidden: exceeded quota"}',
            'pods "a-0" is forbidden: exceeded quota',
        ),
        ('{"kind": "Status"}', "Forbidden"),  # no message: the HTTP reason
        ("<html>bad gateway</html>", "Forbidden"),  # not JSON (a proxy's page)
        ('["a list"]', "Forbidden"),  # JSON, but not a Status
        ("", "Forbidden"),
    ],
)
def test_api_message_is_the_apiservers_words_else_the_reason(body: str, message: str) -> None:
    err = ApiException(status=403, reason="Forbidden")
    err.body = body
    assert api_message(err) == message


class ApiServerStandIn(ThreadedServer):
    """Reads each request; answers from the `answering`-th connection on (never, if 0), earlier ones are
    closed unanswered (a pooled connection the apiserver dropped) or, with `hang`, held silent."""

    def __init__(self, *, answering: int = 0, hang: bool = False) -> None:
        self.answering, self.hang = answering, hang
        super().__init__(("127.0.0.1", 0))

    def answer(self, conn: socket.socket) -> None:
        conn.recv(65536)
        if self.answering and self.connections >= self.answering:
            body = b'{"kind": "Pod"}'
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
        elif self.hang:
            self.stopped.wait(10)


@pytest.fixture
def api_transport(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[int], Clients]:
    """Clients.connect's client against a stand-in on `port` (a kubeconfig with a token, plain HTTP)."""

    def connect(port: int) -> Clients:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            })
        )  # fmt: skip
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setattr(config, "load_incluster_config", _not_in_a_pod)
        return Clients.connect()

    return connect


def _not_in_a_pod() -> None:
    raise config.ConfigException("not in a pod")


def test_a_request_the_apiserver_never_answers_is_sent_once(api_transport: Callable[[int], Clients]) -> None:
    server = ApiServerStandIn(hang=True)
    try:
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            api_transport(server.port).transport("GET", "/api/v1/namespaces/n/pods/p", None, {}, 0.3)
        assert server.connections == 1  # urllib3's default sent it four times: a worker held 4 × 30 s
    finally:
        server.close()


def test_a_connection_dropped_unanswered_is_retried(api_transport: Callable[[int], Clients]) -> None:
    server = ApiServerStandIn(answering=3)
    try:
        answer = api_transport(server.port).transport("GET", "/api/v1/namespaces/n/pods/p", None, {}, 5)
        assert answer == {"kind": "Pod"} and server.connections == 3
    finally:
        server.close()
