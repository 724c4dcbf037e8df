"""`python -m pax_cluster.kubelet`: run the process kubelet until SIGTERM/SIGINT (SIGUSR1 = node loss)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from pax_cluster.kubelet.process_kubelet import ProcessKubelet, ServingTls


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pax-kubelet", description="The process kubelet (dev/test tooling)."
    )
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="pods' logs, emptyDirs, hosts file, PVs")
    parser.add_argument("--node-name", default="pax-local")
    parser.add_argument("--namespace", action="append", help="only run pods here (repeatable; default all)")
    parser.add_argument("--tls-cert-file", type=Path, help="serving certificate of the log endpoint")
    parser.add_argument("--tls-private-key-file", type=Path)
    parser.add_argument(
        "--client-ca-file", type=Path, help="CA of the apiserver's kubelet-client certificate"
    )
    parser.add_argument("--port", type=int, default=0, help="log endpoint port (0: any free one)")
    parser.add_argument(
        "--image-env",
        type=_env_pair,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="env every container gets",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls_files = (args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    if any(tls_files) and not all(tls_files):
        parser.error("--tls-cert-file, --tls-private-key-file and --client-ca-file go together")
    tls = ServingTls(*tls_files, port=args.port) if all(tls_files) else None
    kubelet = ProcessKubelet(
        args.kubeconfig,
        args.root,
        args.node_name,
        namespaces=args.namespace,
        tls=tls,
        image_env=dict(args.image_env),
    )

    def on_term(signum: int, frame: object) -> None:
        kubelet.stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(
        signal.SIGUSR1, lambda s, f: threading.Thread(target=kubelet.lose_node, daemon=True).start()
    )
    kubelet.start()
    while not kubelet.stopping.wait(0.5):
        pass
    kubelet.stop()
    return 0
