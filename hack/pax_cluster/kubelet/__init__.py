"""The process kubelet: runs pods bound to one Node as local processes (dev/test tooling, not shipped).

    python -m pax_cluster.kubelet --kubeconfig .cluster/kubeconfig --root .cluster/kubelet

What it does like a kubelet: registers a Ready Node and heartbeats it; binds unscheduled pods to itself;
runs init containers, native sidecars and main containers with the pod's env resolved (value, fieldRef,
configMap/secret refs, $(VAR)); gives each pod its own loopback IP (127.10.x.y) and makes
`<hostname>.<subdomain>.<ns>.svc` names resolve through a hosts file bind-mounted over /etc/hosts in a
private mount + UTS + PID namespace per container (no process of a container outlives it; workingDir is
entered inside it; hostPID and shareProcessNamespace are refused); volumes are bind-mounted too
(emptyDir, hostPath, persistentVolumeClaim through hostPath PVs under --root, configMap, secret,
downwardAPI, projected; any other type fails the pod with a clear message); serves `kubectl logs` (-f,
--previous) over TLS from logs bounded to 64 MiB per container (the end is kept); posts Events (Started,
Killing, Failed, BackOff);
reports phases, container states, exit codes and termination messages; honours deletion (SIGTERM,
grace, SIGKILL). Signals for tests and demos: SIGUSR1 = node loss (every process SIGKILLed, pods Failed
with a DisruptionTarget condition, the node NotReady for a few seconds, then Ready again, as if replaced).
What it does not do: images (commands run from the project's venv), resource limits, probes,
`kubectl exec`, and securityContext: runAsUser, runAsNonRoot, privileged, capabilities and seccomp are
not enforced (processes run as the kubelet's user, on the host's network and filesystem: a pod can do
what that user can; a mountPath absent on the host is created there, empty, as the mount point).

Rooms: `node` (registration, heartbeats), `watch` (list+watch, binding), `runner` (one pod's life),
`sandbox` (the bash run in each container's namespaces), `volumes` + `provisioner`, `events`,
`logserver` + `runlog` (kubectl logs), `process_kubelet` (composes them), `cli`.
"""

from pax_cluster.kubelet.common import container_log, kill_container, pod_dir
from pax_cluster.kubelet.process_kubelet import ProcessKubelet, ServingTls

__all__ = ["ProcessKubelet", "ServingTls", "container_log", "kill_container", "pod_dir"]
