"""The bash that runs inside each container's private mount + UTS + PID namespace (pure: text only).

`unshare --mount --uts --pid --kill-child --mount-proc --propagation private -- bash -c <script> pax-pod
bash -c <init> pax-init <argv...>`: set the hostname,
bind the shared hosts file over /etc/hosts, bind each volume onto its mount path, enter the container's
workingDir (inside the namespace, so a workingDir in a volume is the volume's; one that does not exist
fails the container with exit 128 and says so in its termination message: nothing is created outside
the volumes), bind the termination-message file, then exec the init: pid 1 of the container's PID
namespace, it runs the container's command and exits with its status. When pid 1 ends, the kernel kills
every process left in the namespace: a child that left the process group (setsid, a daemon's double
fork) dies with its container, as in a container runtime. The init only waits (a pid 1 ignores signals
it has no handler for, so the command is not pid 1): the kubelet's signals reach the command through
the process group, as before.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

MESSAGE_FD = 9
FIRST_SOURCE_FD = 10
START_ERROR_EXIT = 128  # what a container runtime's start error (e.g. chdir failed) exits with
COMMAND_MARKER = "pax-init"  # $0 of the init (ps shows it); the container's command follows it
INIT_SCRIPT = (
    "trap : TERM INT HUP QUIT USR1 USR2; "  # a handler, not SIG_IGN: the command's signals stay default
    '"$@" & child=$!; '
    'while wait "$child"; status=$?; kill -0 "$child" 2>/dev/null; do :; done; '
    'exit "$status"'
)
DEFAULT_TERMINATION_PATH = "/dev/termination-log"


def container_path(path: str) -> str:
    """A path inside the container, absolute: a relative one is taken from the container's root, as a
    runtime does ("data" and "../../data" are /data), never from the kubelet's working directory."""
    return posixpath.normpath(posixpath.join("/", path))


@dataclass(frozen=True)
class Mount:
    """A host directory (or file) bound onto a path inside the container."""

    source: Path
    target: str
    read_only: bool = False


def with_image_paths(mounts: Sequence[Mount], image_paths: Sequence[Path]) -> list[Mount]:
    """Mounts shortest target first, then the "image" (checkout, venv) re-bound onto itself wherever a
    volume would hide it (a checkout under /tmp and an emptyDir at /tmp, say)."""
    ordered = sorted(mounts, key=lambda m: len(m.target))
    ordered += [
        Mount(image, str(image), read_only=False)
        for image in image_paths
        if any(image.is_relative_to(m.target) for m in ordered)
    ]
    return ordered


def namespace_script(
    *,
    hostname: str,
    hosts_file: Path,
    message_file: Path,
    termination_path: str | None,
    mounts: Sequence[Mount],
    working_dir: str | None = None,
) -> str:
    """The script. Every source is opened as a file descriptor before the first mount, since a volume
    mounted over /tmp (say) would otherwise hide sources that live under /tmp."""
    steps = [f"exec {MESSAGE_FD}<>{shlex.quote(str(message_file))}"]
    steps += [f"exec {FIRST_SOURCE_FD + i}<{shlex.quote(str(m.source))}" for i, m in enumerate(mounts)]
    steps += [
        f"hostname {shlex.quote(hostname)}",
        f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts",
    ]
    for i, mount in enumerate(mounts):
        quoted = shlex.quote(mount.target)
        fd = FIRST_SOURCE_FD + i  # mount must not canonicalize: the fd's path may be hidden by now
        make = f"mkdir -p {quoted}" if mount.source.is_dir() else f"touch {quoted}"
        steps.append(
            f"{{ [ -e {quoted} ] || {make}; }} && mount --no-canonicalize --bind /proc/self/fd/{fd} {quoted}"
        )
        if mount.read_only:
            steps.append(f"mount -o remount,bind,ro {quoted}")
        steps.append(f"exec {fd}<&-")
    if working_dir:
        working_dir = container_path(working_dir)
        quoted = shlex.quote(working_dir)
        why = shlex.quote(f"workingDir {working_dir}: no such directory in the container")
        steps.append(f"{{ cd -- {quoted} || {{ echo {why} >&{MESSAGE_FD}; exit {START_ERROR_EXIT}; }}; }}")
    message_path = shlex.quote(container_path(termination_path or DEFAULT_TERMINATION_PATH))
    create = f'mkdir -p "$(dirname {message_path})" && touch {message_path}'
    bind_message = f"mount --no-canonicalize --bind /proc/self/fd/{MESSAGE_FD} {message_path}"
    steps.append(f"{{ [ -e {message_path} ] || {{ {create}; }}; }} && {bind_message} && exec {MESSAGE_FD}>&-")
    return " && ".join(steps) + ' && exec "$@"'


def wrapped_argv(script: str, argv: Sequence[str]) -> list[str]:
    """The command the kubelet starts for one container."""
    return [
        "unshare",
        "--mount",
        "--uts",
        "--pid",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        "bash",
        "-c",
        script,
        "pax-pod",
        "bash",
        "-c",
        INIT_SCRIPT,
        COMMAND_MARKER,
        *argv,
    ]
