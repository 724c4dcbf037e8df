"""Entry point: `python -m pax_operator` / `pax-operator`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import re
import signal
from collections.abc import Callable

import kopf

from pax_operator import handlers, telemetry  # noqa: F401 (importing handlers registers them with kopf)
from pax_operator.adapters.incluster import default_namespace
from pax_operator.adapters.install_guard import InstallGuard
from pax_operator.adapters.lease import Elector, LeaderElectionConfig, Leadership
from pax_operator.settings import TUNABLES, Tunable

NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _checked(tunable: Tunable) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            return tunable.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return parse


def _namespace(text: str) -> str:
    """An exact namespace name (an RFC 1123 label): kopf would take `team-*` as a glob, the informers not."""
    if not NAMESPACE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (lowercase RFC 1123 label)")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pax-operator", description="The PaxJob operator (kopf).")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        type=_namespace,
        help="watch only these namespaces (repeatable, exact names; default: all)",
    )
    parser.add_argument(
        "--liveness", default="http://127.0.0.1:8080/healthz", help="kopf liveness endpoint ('' to disable)"
    )
    for tunable in TUNABLES:
        parser.add_argument(tunable.flag, type=_checked(tunable), default=tunable.default, help=tunable.help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--metrics-address",
        default="",
        help="host:port serving /metrics, /healthz and /readyz ('' to disable; e.g. 0.0.0.0:8081)",
    )
    parser.add_argument(
        "--admission-policy",
        default="",
        help="reconcile nothing until this ValidatingAdmissionPolicy and its binding of the same name "
        "enforce the PaxJob pod-authority checks, and stop if they no longer do; the binding's "
        "pax.dev/watch-namespaces annotation must name the --namespace values (or '*'), and an older "
        "install's binding naming any of them keeps this one from running ('' to run without the policy "
        "and without this check; docs/security.md)",
    )
    election = parser.add_argument_group("leader election (coordination.k8s.io Lease)")
    election.add_argument(
        "--leader-elect", action="store_true", help="run the work queue only while holding the Lease"
    )
    election.add_argument(
        "--leader-election-namespace",
        default=None,
        help="namespace of the Lease (default: $POD_NAMESPACE, else the pod's ServiceAccount namespace)",
    )
    election.add_argument("--leader-election-id", default="pax-operator", help="name of the Lease")
    election.add_argument("--lease-duration", type=float, default=15.0, help="seconds a standby waits")
    election.add_argument("--renew-deadline", type=float, default=10.0, help="seconds the leader may fail")
    election.add_argument("--retry-period", type=float, default=2.0, help="seconds between Lease tries")
    return parser.parse_args(argv)


def leadership(args: argparse.Namespace, stop_flag: asyncio.Event) -> Leadership:
    """Who decides when the work queue runs: an Elector with --leader-elect, else nobody (it just runs);
    with --admission-policy, not before the install guard passes."""
    elector = None
    if args.leader_elect:
        namespace = args.leader_election_namespace or default_namespace()
        if not namespace:
            raise SystemExit("--leader-elect: set --leader-election-namespace (or $POD_NAMESPACE)")
        try:
            settings = LeaderElectionConfig(
                namespace=namespace,
                name=args.leader_election_id,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
            )
        except ValueError as err:
            raise SystemExit(f"--lease-duration/--renew-deadline/--retry-period: {err}") from err
        elector = Elector(settings)
    guard = None
    if args.admission_policy:
        guard = InstallGuard(
            args.admission_policy, tuple(args.namespace), on_record=telemetry.set_install_blocked
        )
    return Leadership(
        elector=elector, stop_operator=stop_flag.set, on_change=telemetry.set_leading, guard=guard
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to stderr
    kopf.configure(verbose=args.verbose)
    logging.getLogger("pax_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # one line per watch event and per liveness probe drowns the transitions
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Set when leadership is lost: the process exits, a restart is a standby. An asyncio.Event, set on the
    # loop: kopf waits for a threading.Event in an executor thread that nothing wakes on SIGTERM, and the
    # loop's shutdown then waits 300 s for that thread (the pod SIGKILLed at the end of its grace period).
    stop_flag = asyncio.Event()
    lead = leadership(args, stop_flag)
    telemetry.instrument_kubernetes_client()
    if args.metrics_address:
        telemetry.HEALTH.readiness = lead.readiness
        telemetry.serve(args.metrics_address)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(
            **{t.name: getattr(args, t.name) for t in TUNABLES}, leadership=lead, namespaces=args.namespace
        ),
        stop_flag=stop_flag,
    )
    return 1 if stop_flag.is_set() else 0
