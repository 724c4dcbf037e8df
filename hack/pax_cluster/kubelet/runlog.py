"""Which bytes of a container's log belong to which run: `kubectl logs` shows the current run,
`--previous` the one before (a restart in place). Each launch appends `<pod uid> <offset>` to
`<container>.runs` beside the log, so one appended log file keeps every run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 64 * 1024  # logs are read in blocks of this size: never whole (a pod may print gigabytes)


class NoSuchRun(LookupError):
    """The log (or the previous run) asked for does not exist."""


@dataclass(frozen=True)
class Run:
    """One container run: bytes [start, end) of the log (end None: still being written)."""

    uid: str
    start: int
    end: int | None


def runs_file(log_file: Path) -> Path:
    return log_file.with_suffix(".runs")


def mark_run_start(log_file: Path, uid: str) -> None:
    """Record that a new run of the container starts at the log's current end."""
    size = log_file.stat().st_size if log_file.exists() else 0
    with runs_file(log_file).open("a") as out:
        out.write(f"{uid} {size}\n")


def parse_runs(text: str) -> list[Run]:
    """`<uid> <offset>` lines → runs; each ends where the next starts."""
    marks = []
    for line in text.splitlines():
        uid, _, offset = line.partition(" ")
        if uid and offset.strip().isdigit():
            marks.append((uid, int(offset)))
    return [
        Run(uid, start, marks[i + 1][1] if i + 1 < len(marks) else None)
        for i, (uid, start) in enumerate(marks)
    ]


def select_run(runs: list[Run], previous: bool) -> Run:
    """The latest run (of the newest pod of this name), or the one before it in the same pod."""
    if not runs:
        raise NoSuchRun("container has not started")
    latest = runs[-1]
    if not previous:
        return latest
    same_pod = [r for r in runs if r.uid == latest.uid]
    if len(same_pod) < 2:
        raise NoSuchRun("previous terminated container not found")
    return same_pod[-2]


def find_run(log_file: Path, previous: bool) -> Run:
    """The run of `log_file` to show (see `select_run`)."""
    try:
        text = runs_file(log_file).read_text()
    except FileNotFoundError:
        raise NoSuchRun("container has not started") from None
    return select_run(parse_runs(text), previous)


def read_run(log_file: Path, run: Run) -> bytes:
    """The bytes of one run (so far, when it is still being written)."""
    with log_file.open("rb") as f:
        f.seek(run.start)
        return f.read() if run.end is None else f.read(max(0, run.end - run.start))


def tail_lines(data: bytes, lines: int | None) -> bytes:
    """The last `lines` lines of `data` (all when None; none when 0)."""
    if lines is None:
        return data
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def run_end(log_file: Path, run: Run) -> int:
    """Where the run's bytes end now (the log's size while it is still being written)."""
    return run.end if run.end is not None else log_file.stat().st_size


def tail_offset(log_file: Path, start: int, end: int, lines: int | None) -> int:
    """Where the last `lines` lines of bytes [start, end) begin (`start` when None, `end` when <= 0),
    found reading backwards block by block: as `tail_lines`, for lines ending in newlines."""
    if lines is None:
        return start
    if lines <= 0:
        return end
    found, position = 0, end
    with log_file.open("rb") as f:
        while position > start:
            begin = max(start, position - BLOCK)
            f.seek(begin)
            block = f.read(position - begin)
            for i in range(len(block) - 1, -1, -1):
                if block[i] == 0x0A and begin + i != end - 1:  # the last byte's newline ends the last line
                    found += 1
                    if found == lines:
                        return begin + i + 1
            position = begin
    return start


def read_range(log_file: Path, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of the log, a block at a time."""
    with log_file.open("rb") as f:
        f.seek(start)
        while start < end:
            block = f.read(min(BLOCK, end - start))
            if not block:
                return
            start += len(block)
            yield block


def read_tail(path: Path, size: int) -> bytes:
    """The last `size` bytes of a file (b"" if it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            return f.read(size)
    except FileNotFoundError:
        return b""


def bound(log_file: Path, limit: int, keep: int) -> int:
    """Keep a container's log under `limit` bytes: over it, only its last `keep` bytes (from a line start)
    stay, after a line saying how many were dropped, as one run of the newest pod (earlier runs' offsets
    are gone: `--previous` has nothing). Bytes the container writes while this runs may be lost, as
    with any copy-and-truncate rotation. Returns the bytes dropped (0: under the limit)."""
    try:
        size = log_file.stat().st_size
    except FileNotFoundError:
        return 0
    if size <= limit:
        return 0
    tail = read_tail(log_file, keep)
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    dropped = size - len(tail)
    try:
        runs = parse_runs(runs_file(log_file).read_text())
    except FileNotFoundError:
        runs = []
    note = f"[process kubelet: {dropped} earlier bytes of this log dropped: it was over {limit} bytes]\n"
    kept = note.encode() + tail
    # Over the file's start, then cut: emptied first, what the container appended in between (it appends)
    # would come before the note. What it appends between the write and the cut is lost instead.
    with log_file.open("r+b") as f:
        f.write(kept)
        f.truncate(len(kept))
    runs_file(log_file).write_text(f"{runs[-1].uid if runs else ''} 0\n")
    return dropped
