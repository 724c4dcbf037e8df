"""Start and stop component processes; logs go to files, nothing is left running after `stop`."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Self

_PR_SET_PDEATHSIG = 1
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: hack/pax_cluster/procs.py
DEPLOY = REPO_ROOT / "deploy"  # CRDs, RBAC, policy (kustomize)
PAX_CRDS = ("paxjobs.pax.dev", "paxsweeps.pax.dev")  # the CRDs under DEPLOY/crds


class StartStop:
    """Base of the components: `with component:` starts it and stops it on the way out."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class WaitTimeout(TimeoutError):
    """A bounded wait ran out (the message says what was awaited and the last value seen)."""


def wait_for[T](what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy (returned); raise `WaitTimeout` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def wait_ready(
    what: str,
    popen: subprocess.Popen[bytes] | None,
    log: Path,
    ready: Callable[[], object],
    timeout: float,
    error: Callable[[str], Exception] = RuntimeError,
    interval: float = 0.2,
) -> None:
    """`wait_for` a process we started: poll `ready` until truthy; raise `error(message)`, the message
    ending in the log's tail, as soon as the process exits or when `timeout` runs out."""

    def probe() -> object:
        if popen is not None and popen.poll() is not None:
            raise error(f"{what} exited {popen.returncode}; log {log}:\n{log_tail(log)}")
        return ready()

    try:
        wait_for(what, probe, timeout, interval)
    except WaitTimeout as err:
        raise error(f"{err}; log {log}:\n{log_tail(log)}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def taken_on_every_address(ports: Sequence[int], probe: str = "127.11.0.1") -> list[int]:
    """The ports another process listens on at every address (0.0.0.0 or [::]): no pod's own loopback IP
    (127.10.x.y) can bind them then. `probe` is a loopback address no pod has."""
    taken = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not fooled by TIME_WAIT
            try:
                s.bind((probe, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    taken.append(port)
    return taken


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    detach: bool,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session with stdout+stderr appended to `log` (env: this process's if None).

    Unless `detach`, the child is SIGKILLed by the kernel if this process dies without calling stop.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=None if detach else _die_with_parent,
        )


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (None: no such process). With the pid, it names one
    process: a pid written to a state file may belong to another process by the time it is read (a
    reboot, a crash long ago), even to one of the same executable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime


def alive(pid: int, exe: str | None = None, started: int | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, its executable path is `exe` and it started at
    `started` (`start_time`)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X") or (started is not None and int(fields[19]) != started):
        return False
    if exe is not None:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
        except OSError:
            return False
        return argv0 == exe
    return True


def terminate(pids: Sequence[int], *, grace_s: float = 10.0, is_alive: Callable[[int], bool] = alive) -> None:
    """SIGTERM every pid's process group, wait up to `grace_s`, then SIGKILL what is left; wait for exit.

    `is_alive` decides liveness (pass one that reaps, e.g. `Popen.poll() is None`, for own children).
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        left = [p for p in pids if is_alive(p)]
        for pid in left:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass
            except PermissionError:
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            left = [p for p in left if is_alive(p)]
            if left:
                time.sleep(0.05)
        if not left:
            return
    raise RuntimeError(f"processes {left} survived SIGKILL")


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (empty if it does not exist)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
