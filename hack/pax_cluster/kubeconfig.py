"""Write self-contained kubeconfig files (CA and credentials embedded)."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

CONTEXT = "pax-local"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """Write a kubeconfig (mode 0600) with one cluster/user/context authenticating by cert or token."""
    if (client_cert_pem is None) == (token is None):
        raise ValueError("give exactly one of a client certificate or a token")
    creds: dict[str, str] = {}
    if token is not None:
        creds["token"] = token
    else:
        assert client_key_pem is not None
        creds["client-certificate-data"] = _b64(client_cert_pem or b"")
        creds["client-key-data"] = _b64(client_key_pem)
    context: dict[str, str] = {"cluster": CONTEXT, "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": CONTEXT, "context": context}],
        "current-context": CONTEXT,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
