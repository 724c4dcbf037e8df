"""`python -m pax_operator` as a subprocess authenticated as its own ServiceAccount (never as
system:masters), started until its liveness endpoint answers; used by the local stack and the tests."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from pax_cluster import procs

READY_TIMEOUT_S = 60.0


class OperatorError(RuntimeError):
    """The operator exited or did not become healthy in time (the message has its log tail)."""


def http_ok(url: str) -> bool:
    """True if `url` answers 200 within a second (no proxies)."""
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def operator_env(kubeconfig: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's env pointed at `kubeconfig` (never the in-cluster config)."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), PYTHONUNBUFFERED="1", **(extra or {}))
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return env


class OperatorProcess:
    """One operator process watching `namespaces` (all when empty)."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        namespaces: Sequence[str] = (),
        scrape_interval_s: float | None = 2.0,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        detach: bool = False,
        port: int | None = None,
        cwd: Path = procs.REPO_ROOT,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.namespaces = tuple(namespaces)
        self.scrape_interval_s = scrape_interval_s
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.detach = detach
        self.port = port or procs.free_port()
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "pax_operator",
            f"--liveness={self.liveness_url}",
        ]
        if self.scrape_interval_s is not None:  # None: the operator's own default
            argv.append(f"--scrape-interval={self.scrape_interval_s}")
        for namespace in self.namespaces:
            argv += ["-n", namespace]
        return argv + self.extra_args

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Start it and wait (bounded) until /healthz answers; `OperatorError` if it exits first."""
        env = operator_env(self.kubeconfig, self.extra_env)
        self.proc = procs.spawn(self.argv(), self.log_path, detach=self.detach, env=env, cwd=self.cwd)
        ready = functools.partial(http_ok, self.liveness_url)
        procs.wait_ready("operator /healthz", self.proc, self.log_path, ready, timeout_s, OperatorError)
        return self

    def dump_stacks(self) -> None:
        """Ask the operator for its threads' stacks (into its log): diagnostics for a stalled test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as an OOM kill or node loss would do."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        return procs.log_tail(self.log_path, lines)
