"""What a compiled train step really does: its matmul dtypes and attention kernel (from the lowered
StableHLO) and where its device time goes (from a profiler trace), for the accelerator benchmark.

Read from the step, not from the knobs: a layer that fixes its own dtype (nnx.Embed did) turned a bf16
step back into fp32, and `attention=auto` then chose XLA attention, without any other sign.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

DOT_GENERAL = re.compile(r"stablehlo\.dot_general [^\n]*?: \(tensor<([^>]*)>, tensor<([^>]*)>\)")
CUDNN_ATTENTION = "__cudnn$fmha"  # the custom call jax.nn.dot_product_attention(implementation="cudnn") emits
# Coarse classes of device ops by name, first match wins (XLA's GPU op and kernel names).
OP_CLASSES = (
    ("attention", ("fmha", "flash", "sdpa", "attention")),
    ("matmul", ("gemm", "dot", "cublas", "matmul", "xmma", "nvjet", "cutlass")),
    ("copy", ("copy", "transpose", "memcpy", "memset")),
    ("fusion", ("fusion",)),
)


def matmul_dtypes(stablehlo: str) -> dict[str, int]:
    """How many dot_generals the lowered step has per operand element types ("bf16xbf16", "f32xf32", ...)."""
    pairs = DOT_GENERAL.findall(stablehlo)
    return dict(Counter(f"{a.rsplit('x', 1)[-1]}x{b.rsplit('x', 1)[-1]}" for a, b in pairs))


def attention_in(stablehlo: str) -> str:
    """'cudnn' when the lowered step calls cuDNN's fused attention, else 'xla' (einsums and a softmax)."""
    return "cudnn" if CUDNN_ATTENTION in stablehlo else "xla"


def op_class(name: str) -> str:
    """attention | matmul | copy | fusion | other, from an op or kernel name."""
    lowered = name.lower()
    return next((cls for cls, marks in OP_CLASSES if any(m in lowered for m in marks)), "other")


def trace(run_steps: Callable[[], None], directory: Path) -> Path:
    """Run `run_steps` under jax.profiler.trace into `directory`; the .xplane.pb it wrote."""
    with jax.profiler.trace(str(directory)):
        run_steps()
    return max(directory.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)


def leaves(events: list[Any]) -> list[tuple[str, float]]:
    """(name, duration ns) of the events no other event of the line starts inside: a `while` or a CPU
    thunk wrapper encloses the ops it runs, and counting both would count that time twice."""
    ordered = sorted(events, key=lambda ev: (ev.start_ns, -ev.duration_ns))
    following = [*ordered[1:], None]
    return [
        (ev.name, ev.duration_ns)
        for ev, nxt in zip(ordered, following, strict=True)
        if nxt is None or nxt.start_ns >= ev.start_ns + ev.duration_ns
    ]


def _op_events(xplane: Path) -> list[tuple[str, float]]:
    """(op name, duration ns) of the executed XLA ops: the device's "XLA Ops" line (each kernel's own
    stream lines would count it twice), or on CPU the host's XLA execution threads."""
    data = jax.profiler.ProfileData.from_file(str(xplane))
    planes = list(data.planes)
    devices = [p for p in planes if p.name.startswith("/device:")]
    events: list[tuple[str, float]] = []
    for plane in devices or [p for p in planes if p.name == "/host:CPU"]:
        lines = list(plane.lines)
        ops = [ln for ln in lines if ln.name == "XLA Ops"] if devices else []
        chosen = ops or [ln for ln in lines if devices or ln.name.startswith("tf_XLA")]
        for line in chosen:
            events += leaves(list(line.events))
    return events


def summarize(xplane: Path, steps: int, top: int = 20) -> dict[str, Any]:
    """Device op time per step: total, by coarse class, and the `top` ops by time (ms per step, calls)."""
    time_ns: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    for name, ns in _op_events(xplane):
        time_ns[name] += ns
        calls[name] += 1
    per_step_ms = {name: ns / steps / 1e6 for name, ns in time_ns.items()}
    by_class: Counter[str] = Counter()
    for name, ms in per_step_ms.items():
        by_class[op_class(name)] += ms
    return {
        "steps": steps,
        "op_ms_per_step": round(sum(per_step_ms.values()), 3),
        "by_class_ms": {cls: round(ms, 3) for cls, ms in by_class.most_common()},
        "top": [
            [name, round(per_step_ms[name], 3), calls[name] // steps] for name, _ in time_ns.most_common(top)
        ],
    }
