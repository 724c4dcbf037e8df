"""`make demo-sweep`: a PaxSweep searches reverse_digits' learning rate; every trial is a PaxJob that trains.

Everything runs locally (control plane, the operator as its own ServiceAccount, the process kubelet). The
sweep runs 6 trials, 2 at a time, random search over the learning rate on a log scale; the demo prints
`kubectl get psw` and the trials as they progress, then the best trial from the sweep's status.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from pax_cluster.demo import demo_args, say
from pax_cluster.procs import log_tail
from pax_cluster.stack import LocalStack

NAMESPACE = "pax-demo-sweep"
SWEEP = "lr"
DEADLINE_S = 1200.0
POLL_S = 3.0


def paxsweep(log_dir: Path, trials: int, parallel: int, steps: int) -> dict[str, Any]:
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "metadata": {"name": SWEEP, "namespace": NAMESPACE},
        "spec": {
            "template": {
                "experiment": "reverse_digits",
                "image": "pax-on-kubernetes/trainer:0.1.0",
                "jobLogDir": str(log_dir),
                "topology": {"cpu": {"hosts": 1}},
                "overrides": {"num_train_steps": str(steps), "eval_interval_steps": str(steps // 2)},
                "podTemplate": {
                    "volumes": [{"name": "job-log-dir", "hostPath": {"path": str(log_dir)}}],
                    "volumeMounts": [{"name": "job-log-dir", "mountPath": str(log_dir)}],
                },
            },
            "parameters": [
                {"name": "learning_rate", "type": "float", "min": 1e-5, "max": 0.1, "scale": "log"}
            ],
            "algorithm": {"name": "random", "seed": 6},
            "objective": {"metric": "eval_test/loss", "goal": "minimize"},
            "maxTrials": trials,
            "parallelTrials": parallel,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = demo_args(argv, "pax-demo-sweep", __doc__, trials=6, parallel=2, steps=40)
    root = args.root
    log_dir = root / "sweeps" / SWEEP
    stack = LocalStack(root / "stack", namespaces=(NAMESPACE,), scrape_interval_s=1.0)
    try:
        say("== [1/3] Local control plane, operator (PaxJob + PaxSweep controllers), process kubelet")
        stack.start()
        say(f"   kubectl: export KUBECONFIG={stack.kubeconfig}")
        stack.control_plane.create_namespace(NAMESPACE)
        log_dir.mkdir(parents=True, exist_ok=True)
        say(
            f"== [2/3] PaxSweep {NAMESPACE}/{SWEEP}: {args.trials} trials of reverse_digits,"
            f" {args.parallel} at a time,"
        )
        say(
            "   random search over learning_rate in [1e-5, 0.1] (log scale),"
            " objective eval_test/loss (minimize)"
        )
        stack.kubectl(
            "apply", "-f", "-", input=json.dumps(paxsweep(log_dir, args.trials, args.parallel, args.steps))
        )
        deadline, last = time.monotonic() + DEADLINE_S, ""
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            sweep = json.loads(stack.kubectl("get", "paxsweep", SWEEP, "-n", NAMESPACE, "-o", "json"))
            status = sweep.get("status") or {}
            table = stack.kubectl("get", "psw,pj", "-n", NAMESPACE)
            if table != last:
                say("\n" + "\n".join(f"   {line}" for line in table.strip().splitlines()))
                last = table
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(POLL_S)
        else:
            say(f"   timed out; operator log:\n{log_tail(stack.operator_log, 30)}")
            return 1
        say(f"\n== [3/3] {status.get('phase')}: {status.get('message', '')}")
        best = status.get("bestTrial") or {}
        say(
            f"   best trial {best.get('name')}:"
            f" learning_rate={best.get('parameters', {}).get('learning_rate')}"
        )
        say(f"   objective eval_test/loss={best.get('objective')}")
        say(f"   counts: {json.dumps(status.get('trials'))}")
        return 0 if status.get("phase") == "Succeeded" else 1
    finally:
        say("\n== Cleaning up: operator, kubelet (and its pods), control plane")
        stack.stop()
        say(f"   trial directories kept in {log_dir}")


if __name__ == "__main__":
    sys.exit(main())
