"""Entry point: `python -m pax_operator` / `pax-operator`."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal

import kopf

from pax_operator import handlers
from pax_operator.reconcile import SCRAPE_INTERVAL_SECONDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pax-operator", description="The PaxJob operator (kopf).")
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable; default: all)",
    )
    parser.add_argument(
        "--liveness", default="http://127.0.0.1:8080/healthz", help="kopf liveness endpoint ('' to disable)"
    )
    parser.add_argument("--workers", type=int, default=handlers.WORKERS, help="concurrent reconciles")
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=SCRAPE_INTERVAL_SECONDS,
        help="seconds between progress scrapes of host 0 (also the hang-check cadence)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to stderr
    kopf.configure(verbose=args.verbose)
    logging.getLogger("pax_operator").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # one line per watch event and per liveness probe drowns the transitions
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(workers=args.workers, scrape_interval=args.scrape_interval),
    )
    return 0
