"""A pod that prints gigabytes must not make the kubelet read them: the exit's log tail, the termination
message and `kubectl logs` (whole, --tail, --limit-bytes) read bounded blocks."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pax_cluster.kubelet import runlog

# Run in a child process whose address space is capped below the log's size: reading it whole fails.
_CHILD = textwrap.dedent(
    """
    import io, resource, sys, threading
    from pathlib import Path
    from types import SimpleNamespace

    from pax_cluster.kubelet import common
    from pax_cluster.kubelet.logserver import LogServer
    from pax_cluster.kubelet.runner import Container

    root, size = Path(sys.argv[1]), int(sys.argv[2])
    log_file = common.container_log(root, "ns", "p", "main")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as f:
        f.truncate(size)  # sparse: no disk used
        f.seek(size)
        f.write(b"line one\\nthe real error\\n")
    (log_file.with_suffix(".runs")).write_text("uid 0\\n")
    message = root / "main.termination-log"
    with message.open("wb") as f:
        f.write(b"written by the container\\n")
        f.truncate(size)

    limit = size // 2
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    spec = {"name": "main", "terminationMessagePolicy": "FallbackToLogsOnError"}
    proc = SimpleNamespace(wait=lambda: 1)
    outcome = Container(spec, proc, "t0", message, log_file).outcome()
    assert outcome.code == 1 and outcome.message.startswith("written by the container"), outcome
    message.write_bytes(b"")
    outcome = Container(spec, proc, "t0", message, log_file).outcome()
    assert outcome.message.endswith("the real error"), outcome.message[-80:]

    class Sink(io.RawIOBase):
        def __init__(self):
            self.size, self.last = 0, b""
        def write(self, data):
            self.size += len(data)
            self.last = (self.last + bytes(data))[-64:]
            return len(data)

    def get(query):
        sink = Sink()
        handler = SimpleNamespace(
            wfile=sink, send_response=lambda c: None, send_header=lambda *a: None, end_headers=lambda: None
        )
        server = SimpleNamespace(root=root, stopping=threading.Event(), is_running=lambda *a: False)
        LogServer.serve_logs(server, handler, "ns", "p", "main", query)
        return sink

    assert get({"tailLines": ["1"]}).last == b"the real error\\n"
    assert get({"limitBytes": ["5"]}).size == 5
    whole = get({})
    assert whole.size == size + 24 and whole.last.endswith(b"line one\\nthe real error\\n")
    print("ok")
    """
)


@pytest.mark.parametrize("size", [2 * 1024**3])
def test_a_log_of_gigabytes_is_never_read_whole(tmp_path: Path, size: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), str(size)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize(
    "data",
    [b"", b"a", b"a\n", b"a\nb", b"a\nb\n", b"\n\n\n", b"x\n" * 50, b"one\ntwo\nthree\n" * 7 + b"tail"],
)
@pytest.mark.parametrize("lines", [None, 0, 1, 2, 3, 40, 1000])
def test_tail_offset_agrees_with_tail_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes, lines: int | None
) -> None:
    monkeypatch.setattr(runlog, "BLOCK", 4)  # lines across block boundaries
    log = tmp_path / "c.log"
    log.write_bytes(b"previous run\n" + data + b"next run\n")
    start, end = len(b"previous run\n"), len(b"previous run\n") + len(data)
    offset = runlog.tail_offset(log, start, end, lines)
    assert b"".join(runlog.read_range(log, offset, end)) == runlog.tail_lines(data, lines)


def test_a_log_over_its_limit_keeps_its_end_and_says_what_was_dropped(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    for uid, text in (
        ("old-pod", b"attempt 0\n" * 50),
        ("pod", b"first run\n" * 50),
        ("pod", b"line\n" * 100),
    ):
        runlog.mark_run_start(log, uid)
        with log.open("ab") as out:
            out.write(text)
    size = log.stat().st_size
    assert runlog.bound(log, size, 64) == 0 and log.stat().st_size == size  # at the limit: untouched
    dropped = runlog.bound(log, 1000, 64)
    assert dropped == size - 60  # the last 64 bytes, from the first line start in them: 12 lines
    text = runlog.read_run(log, runlog.find_run(log, previous=False)).decode()
    assert (
        text
        == f"[process kubelet: {dropped} earlier bytes of this log dropped: it was over 1000 bytes]\n"
        + ("line\n" * 12)
    )
    with pytest.raises(runlog.NoSuchRun):
        runlog.find_run(log, previous=True)
    with log.open("ab") as out:  # the container goes on appending
        out.write(b"after\n")
    assert runlog.read_run(log, runlog.find_run(log, previous=False)).endswith(b"line\nafter\n")


def test_a_log_cut_while_its_container_writes_starts_with_the_note(tmp_path: Path) -> None:
    """The cut emptied the file, then wrote the note: a line the container appended in between came first
    (seen in make test: a log starting with the pod's output, the note further down)."""
    import os
    import threading

    log = tmp_path / "c.log"
    log.write_bytes(b"")
    stop = threading.Event()

    def container() -> None:  # appends as a container's stdout does (O_APPEND)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            while not stop.is_set():
                os.write(fd, b"x" * 99 + b"\n")
        finally:
            os.close(fd)

    writer = threading.Thread(target=container)
    writer.start()
    misplaced = cuts = 0
    try:
        while cuts < 300:
            if runlog.bound(log, 64 * 1024, 4 * 1024):
                cuts += 1
                with log.open("rb") as f:
                    misplaced += not f.read(18).startswith(b"[process kubelet: ")
    finally:
        stop.set()
        writer.join()
    assert misplaced == 0, f"{misplaced} of {cuts} cuts left the container's bytes before the note"
