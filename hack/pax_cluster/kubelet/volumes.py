"""Volumes the process kubelet provides, as host directories bound into each container.

Provided: emptyDir (under the pod's directory), hostPath, persistentVolumeClaim (through the hostPath
provisioner), configMap, secret, downwardAPI and projected (the ServiceAccount token volume). Any other
type is a `PodSpecError` that fails the pod with a clear message: never skipped silently.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pax_cluster.kubelet.sandbox import Mount, container_path
from pax_cluster.podenv import PodSpecError, field_ref

PROVIDED = (
    "emptyDir",
    "hostPath",
    "persistentVolumeClaim",
    "configMap",
    "secret",
    "downwardAPI",
    "projected",
)
_KNOWN_KEYS = frozenset({"name", *PROVIDED})


class VolumeApi(Protocol):
    """What volumes need from the cluster."""

    def claim_path(self, namespace: str, claim: str) -> Path:
        """The host directory of a PersistentVolumeClaim's volume (provisioned if needed)."""
        ...

    def config_data(self, namespace: str, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """A ConfigMap's ("configMap") or Secret's ("secret") data; None when optional and absent."""
        ...

    def service_account_token(self, pod: Mapping[str, Any], audience: str | None, expiration_s: int) -> str:
        """A token for the pod's ServiceAccount, bound to the pod."""
        ...


def volume_type(volume: Mapping[str, Any]) -> str:
    """The volume's source type, e.g. "emptyDir" (the one key besides `name`)."""
    kinds = [k for k in volume if k != "name"]
    return kinds[0] if kinds else "emptyDir"


def _write(directory: Path, relative: str, data: bytes) -> None:
    path = (directory / relative).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise PodSpecError(f"volume item path {relative!r} leaves the volume")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _items(data: Mapping[str, bytes], items: list[dict[str, Any]] | None, what: str) -> dict[str, bytes]:
    """Files (relative path → bytes) of a configMap/secret source: every key, or the listed items."""
    if not items:
        return dict(data)
    files = {}
    for item in items:
        if item["key"] not in data:
            raise PodSpecError(f"{what} has no key {item['key']!r}")
        files[item["path"]] = data[item["key"]]
    return files


def _downward(pod: Mapping[str, Any], items: list[dict[str, Any]] | None) -> dict[str, bytes]:
    files = {}
    for item in items or []:
        if "fieldRef" not in item:
            raise PodSpecError(f"downwardAPI item {item.get('path')!r}: only fieldRef is provided")
        files[item["path"]] = field_ref(pod, item["fieldRef"]["fieldPath"]).encode()
    return files


class PodVolumes:
    """Host directories for one pod's volumes, made on first use (once per pod start)."""

    def __init__(self, pod: Mapping[str, Any], pod_dir: Path, api: VolumeApi) -> None:
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.dir = pod_dir / "volumes"
        self.api = api
        self.volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        self._sources: dict[str, Path] = {}

    def mounts(self, container: Mapping[str, Any]) -> list[Mount]:
        """The container's volumeMounts as host sources; `PodSpecError` for anything not provided."""
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = self.volumes.get(mount["name"])
            if volume is None:
                raise PodSpecError(
                    f"container {container['name']}: volumeMount {mount['name']!r} has no volume"
                )
            source = self.source(volume)
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.resolve().is_relative_to(self.source(volume).resolve()):
                    raise PodSpecError(f"volumeMount {mount['name']!r}: subPath leaves the volume")
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(Mount(source, container_path(mount["mountPath"]), bool(mount.get("readOnly"))))
        return mounts

    def source(self, volume: Mapping[str, Any]) -> Path:
        name = volume["name"]
        if name not in self._sources:
            self._sources[name] = self._make(volume)
        return self._sources[name]

    def _make(self, volume: Mapping[str, Any]) -> Path:
        name, kind = volume["name"], volume_type(volume)
        unknown = set(volume) - _KNOWN_KEYS
        if unknown:
            raise PodSpecError(
                f"volume {name!r}: {', '.join(sorted(unknown))} volumes are not provided by the process "
                f"kubelet (it provides {', '.join(PROVIDED)})"
            )
        own = self.dir / name
        if kind == "emptyDir":
            own.mkdir(parents=True, exist_ok=True)
            return own
        if kind == "hostPath":
            return self._host_path(name, volume["hostPath"])
        if kind == "persistentVolumeClaim":
            return self.api.claim_path(self.namespace, volume["persistentVolumeClaim"]["claimName"])
        own.mkdir(parents=True, exist_ok=True)
        if kind == "downwardAPI":
            files = _downward(self.pod, volume["downwardAPI"].get("items"))
        elif kind == "projected":
            files = self._projected(volume["projected"].get("sources") or [])
        else:
            files = self._config(kind, volume[kind])
        for relative, data in files.items():
            _write(own, relative, data)
        return own

    @staticmethod
    def _host_path(name: str, source: Mapping[str, Any]) -> Path:
        path = Path(source["path"])
        kind = source.get("type") or ""
        if path.exists():
            return path
        if kind in ("", "DirectoryOrCreate"):
            path.mkdir(parents=True, exist_ok=True)
            return path
        if kind == "FileOrCreate":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return path
        raise PodSpecError(f"volume {name!r}: hostPath {path} ({kind}) does not exist")

    def _config(self, kind: str, source: Mapping[str, Any]) -> dict[str, bytes]:
        ref = source.get("name") if kind == "configMap" else source.get("secretName")
        what = f"{kind} {ref}"
        data = self.api.config_data(self.namespace, kind, str(ref), bool(source.get("optional")))
        return {} if data is None else _items(data, source.get("items"), what)

    def _projected(self, sources: list[dict[str, Any]]) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        for source in sources:
            if "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                expiration = int(token.get("expirationSeconds") or 3600)
                value = self.api.service_account_token(self.pod, token.get("audience"), expiration)
                files[token["path"]] = value.encode()
            elif "downwardAPI" in source:
                files.update(_downward(self.pod, source["downwardAPI"].get("items")))
            elif "configMap" in source or "secret" in source:
                kind = "configMap" if "configMap" in source else "secret"
                ref = source[kind]
                data = self.api.config_data(self.namespace, kind, ref["name"], bool(ref.get("optional")))
                files.update({} if data is None else _items(data, ref.get("items"), f"{kind} {ref['name']}"))
            else:
                raise PodSpecError(
                    f"projected source {sorted(source)} is not provided by the process kubelet"
                )
        return files


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    """A Secret's base64 `data` as bytes."""
    return {k: base64.b64decode(v) for k, v in (data or {}).items()}
