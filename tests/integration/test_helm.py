"""charts/pax-operator with the real helm (built by hack/build-k8s.sh): lint, render, schema, and a
install / upgrade / uninstall round trip against the local control plane."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pax_cluster import procs
from pax_cluster.binaries import BinariesNotFoundError, find_binaries
from pax_cluster.controlplane import ControlPlane
from pax_cluster.procs import DEPLOY, REPO_ROOT
from paxjob_harness import OperatorProcess, Pax, cpu_job

pytestmark = pytest.mark.integration

CHART = REPO_ROOT / "charts" / "pax-operator"
WAIT_S = 30.0
HELM_TIMEOUT_S = 120.0

Helm = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """Run the cached helm with private cache/config/data dirs; `check=True` fails with its stderr."""
    try:
        exe = str(find_binaries().require_helm())
    except BinariesNotFoundError as e:
        pytest.fail(str(e), pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }

    def run(
        *args: str, kubeconfig: Path | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [exe, *args, *([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=HELM_TIMEOUT_S, env=env)
        if check and r.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}", pytrace=False)
        return r

    return run


@pytest.fixture
def namespaced_release(
    helm: Helm, control_plane: ControlPlane, restricted_namespace: str, namespace: str
) -> Iterator[str]:
    """The chart installed in `restricted_namespace`, watching `namespace` only (namespaced RBAC)."""
    release = f"pax-{secrets.token_hex(3)}"
    helm("install", release, str(CHART), f"--namespace={restricted_namespace}",
         f"--set=watchNamespaces={{{namespace}}}", kubeconfig=control_plane.kubeconfig)  # fmt: skip
    yield release
    helm("uninstall", release, f"--namespace={restricted_namespace}", "--ignore-not-found",
         kubeconfig=control_plane.kubeconfig, check=False)  # fmt: skip


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    """`helm template` the chart; the non-empty documents."""
    out = helm("template", "t", str(CHART), "--namespace=pax-system", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def deploy_rules(fullname: str = "t-pax-operator") -> list[dict[str, Any]]:
    """deploy/rbac's rules, the install guard's policy named as the chart names it for `fullname`."""
    rules = yaml.safe_load((DEPLOY / "rbac" / "cluster_role.yaml").read_text())["rules"]
    for rule in rules:
        if rule.get("resourceNames") == ["pax-paxjob-pod-authority"]:
            rule["resourceNames"] = [f"{fullname}-paxjob-pod-authority"]
    return rules


def container_args(docs: list[dict[str, Any]]) -> list[str]:
    (deployment,) = by_kind(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def test_helm_version_is_stamped(helm: Helm) -> None:
    want = find_binaries().helm_version
    assert helm("version", "--template={{.Version}}").stdout == want
    # The default .Capabilities.KubeVersion is stamped too (upstream's 1.20 would fail kubeVersion).
    docs = render(helm, "--show-only=templates/deployment.yaml")
    assert by_kind(docs, "Deployment")


@pytest.mark.parametrize("values", [[], ["--set=watchNamespaces={team-a,team-b}", "--set=verbose=true"]])
def test_lint_strict(helm: Helm, values: list[str]) -> None:
    out = helm("lint", "--strict", str(CHART), *values).stdout
    assert "0 chart(s) failed" in out


def test_template_renders_cluster_wide(helm: Helm) -> None:
    docs = render(helm, "--include-crds")
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], d
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            *["CustomResourceDefinition"] * len(list((DEPLOY / "crds").glob("*.yaml"))),
            "ServiceAccount",
            "ClusterRole",  # the operator's
            "ClusterRoleBinding",
            "ClusterRole",  # paxjob editor
            "ClusterRole",  # paxjob viewer
            "Role",  # leader election: the Lease in the release namespace
            "RoleBinding",
            "Deployment",
            "PodDisruptionBudget",  # two replicas: a drain evicts one at a time
            "ValidatingAdmissionPolicy",  # pod authority (deploy/policy)
            "ValidatingAdmissionPolicyBinding",
            # The namespace-label hook: `helm template` cannot look the namespace up, so it is rendered.
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",  # lists the namespace's pods: one holding other workloads' gets no label
            "RoleBinding",
            "Job",
        ]
    )
    for crd in by_kind(docs, "CustomResourceDefinition"):
        plural, group = crd["metadata"]["name"].split(".", 1)
        assert crd == yaml.safe_load((DEPLOY / "crds" / f"{group}_{plural}.yaml").read_text())
    (deployment,) = by_kind(docs, "Deployment")
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    spread = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = spread["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["labelSelector"] == deployment["spec"]["selector"]
    single = render(helm, "--set=replicas=1", "--set=leaderElection.enabled=false")
    assert not by_kind(single, "PodDisruptionBudget")
    assert "affinity" not in by_kind(single, "Deployment")[0]["spec"]["template"]["spec"]
    (operator_role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "t-pax-operator"]
    assert operator_role["rules"] == deploy_rules(), (
        "chart's rules drifted from deploy/rbac/cluster_role.yaml"
    )
    args = container_args(docs)
    assert "--workers=16" in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert "--admission-policy=t-pax-operator-paxjob-pod-authority" in args  # the install guard
    unguarded = render(helm, "--set=admissionPolicy.create=false")
    assert not [a for a in container_args(unguarded) if a.startswith("--admission-policy")]
    (unguarded_role,) = [
        r for r in by_kind(unguarded, "ClusterRole") if r["metadata"]["name"] == "t-pax-operator"
    ]
    assert "admissionregistration.k8s.io" not in {
        g for rule in unguarded_role["rules"] for g in rule["apiGroups"]
    }
    users = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    deploy_users = {
        d["metadata"]["name"]: d for d in yaml.safe_load_all((DEPLOY / "rbac/user_roles.yaml").read_text())
    }
    assert users["t-pax-operator-paxjob-editor"]["rules"] == deploy_users["pax-paxjob-editor"]["rules"]
    assert users["t-pax-operator-paxjob-viewer"]["rules"] == deploy_users["pax-paxjob-viewer"]["rules"]
    for name, d in deploy_users.items():
        aggregate = {k: v for k, v in d["metadata"]["labels"].items() if "aggregate-to" in k}
        chart_labels = users[name.replace("pax-", "t-pax-operator-", 1)]["metadata"]["labels"]
        assert aggregate.items() <= chart_labels.items()


def test_template_ships_deploys_pod_authority_policy(helm: Helm) -> None:
    docs = render(helm)
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    deployed = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority.yaml").read_text())
    assert policy["spec"] == deployed["spec"], "the chart's policy drifted from deploy/policy"
    # The namespaces its operator watches, as the install guard (and another install) reads them.
    assert binding["metadata"]["annotations"] == {"pax.dev/watch-namespaces": "*"}
    (namespaced,) = by_kind(
        render(helm, "--set=watchNamespaces={team-b,team-a}"), "ValidatingAdmissionPolicyBinding"
    )
    assert namespaced["metadata"]["annotations"] == {"pax.dev/watch-namespaces": "team-a,team-b"}
    assert policy["metadata"]["name"] == "t-pax-operator-paxjob-pod-authority"
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    off = render(helm, "--set=admissionPolicy.create=false")
    assert not by_kind(off, "ValidatingAdmissionPolicy") and not by_kind(
        off, "ValidatingAdmissionPolicyBinding"
    )


def test_template_namespace_label_hook(helm: Helm) -> None:
    """The hook Job is PSA-restricted and its ServiceAccount may patch only the release namespace (and list
    its pods: a namespace holding other workloads' pods gets no label)."""
    docs = render(helm)
    hooks = [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]
    assert sorted(d["kind"] for d in hooks) == [
        "ClusterRole", "ClusterRoleBinding", "Job", "Role", "RoleBinding", "ServiceAccount"
    ]  # fmt: skip
    for d in hooks:
        assert d["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert "hook-succeeded" in d["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    (role,) = [d for d in hooks if d["kind"] == "ClusterRole"]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["namespaces"],
            "resourceNames": ["pax-system"],
            "verbs": ["get", "patch"],
        }
    ]
    (pods_role,) = by_kind(hooks, "Role")
    assert pods_role["metadata"]["namespace"] == "pax-system"
    assert pods_role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    (job,) = by_kind(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["LABELS"]) == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    assert env["NAMESPACE"] == "pax-system"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not by_kind(render(helm, "--set=namespace.labelHook=false"), "Job")


def test_template_renders_namespaced_least_privilege(helm: Helm) -> None:
    docs = render(helm, "--set=watchNamespaces={team-a,team-b}", "--set=namespace.labelHook=false")
    (cluster_role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "t-pax-operator"]
    roles = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["pax-system", "team-a", "team-b"]
    # Together the same permissions as deploy/, but pods/services/paxjobs only in the watched namespaces.
    assert roles[0]["rules"] + cluster_role["rules"] == deploy_rules()
    cluster_resources = {res for rule in cluster_role["rules"] for res in rule["resources"]}
    assert cluster_resources == {
        "customresourcedefinitions",
        "namespaces",
        "validatingadmissionpolicies",  # the install guard: its own policy, by name
        "validatingadmissionpolicybindings",
    }
    assert all(set(rule["verbs"]) <= {"get", "list", "watch"} for rule in cluster_role["rules"])
    args = container_args(docs)
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_template_security_context(helm: Helm) -> None:
    (deployment,) = by_kind(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["image"] == "pax-on-kubernetes/operator:0.1.0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set=workers=abc"], "at '/workers': got string, want integer"),
        (["--set=workers=0"], "at '/workers'"),
        (["--set=wrokers=4"], "additional properties 'wrokers' not allowed"),
        (["--set=image.pullPolicy=Sometimes"], "at '/image/pullPolicy'"),
        (["--set=resources.request.cpu=1"], "additional properties 'request' not allowed"),
        (["--set=watchNamespaces={Team_A}"], "at '/watchNamespaces/0'"),
        (["--set=verbose=yes"], "at '/verbose'"),
        (["--set=namespace.podSecurityLabels.team=a"], "invalid propertyName 'team'"),
        # a typo dropped an effect (tolerating NoExecute too) or an anti-affinity without a word
        (["--set=tolerations[0].key=a", "--set=tolerations[0].efect=NoSchedule"], "'efect' not allowed"),
        (["--set=affinity.podAntiAfinity.x=1"], "'podAntiAfinity' not allowed"),
        (["--set=resources.limits.cpu=lots"], "at '/resources/limits/cpu'"),
        (["--set=resources.limits.memory=-1"], "at '/resources/limits/memory'"),
        (["--set=replicas=100000"], "at '/replicas'"),
        (["--set=leaderElection.leaseDurationSeconds=99999999"], "at '/leaderElection/leaseDurationSeconds'"),
        (["--set=admissionPolicy.create=maybe"], "at '/admissionPolicy/create'"),
        (["--set=image.tag=0.1.0 latest"], "at '/image/tag'"),
        (["--set=image.repository=pax/operator:1\nsecurityContext: {}"], "at '/image/repository'"),
        (["--set=priorityClassName=High Priority"], "at '/priorityClassName'"),
    ],
)
def test_schema_rejects_bad_values(helm: Helm, values: list[str], message: str) -> None:
    r = helm("template", "t", str(CHART), *values, check=False)
    assert r.returncode != 0
    assert "values don't meet the specifications of the schema" in r.stderr
    assert message in r.stderr, r.stderr


def test_leader_election_timings_that_the_operator_refuses_fail_the_render(helm: Helm) -> None:
    """The operator exits at start-up unless lease > renew deadline > retry period: a crash loop otherwise."""
    timings = ["--set=leaderElection.renewDeadlineSeconds=30", "--set=leaderElection.retryPeriodSeconds=40"]
    r = helm("template", "t", str(CHART), "--set=leaderElection.enabled=true", *timings, check=False)
    assert r.returncode != 0
    assert "leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds" in r.stderr, r.stderr


def test_a_priority_class_named_like_a_boolean_renders_as_a_string(helm: Helm) -> None:
    (deployment,) = by_kind(render(helm, "--set-string=priorityClassName=true"), "Deployment")
    assert deployment["spec"]["template"]["spec"]["priorityClassName"] == "true"


def test_service_account_name_required_without_create(helm: Helm) -> None:
    r = helm("template", "t", str(CHART), "--set=serviceAccount.create=false", check=False)
    assert r.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in r.stderr


@pytest.mark.parametrize("create", ["true", "false"])
def test_the_operators_rights_never_go_to_the_default_service_account(helm: Helm, create: str) -> None:
    """Bound to `default`, the ClusterRole (create pods as any ServiceAccount, everywhere) went to every pod
    of the release namespace that names no ServiceAccount, and so to whoever may create pods there: the
    chart rendered it without a word (`kubectl auth can-i create pods -n kube-system
    --as=system:serviceaccount:<ns>:default` said yes after the install)."""
    r = helm("template", "t", str(CHART), "--namespace=tools", f"--set=serviceAccount.create={create}",
             "--set=serviceAccount.name=default", check=False)  # fmt: skip
    assert r.returncode != 0, r.stdout
    assert "serviceAccount.name: default would give the operator's rights" in r.stderr
    assert "every pod of namespace tools" in r.stderr


@pytest.mark.parametrize("policy", [True, False])
def test_notes_warn_when_the_pod_authority_policy_is_left_out(
    helm: Helm, control_plane: ControlPlane, restricted_namespace: str, policy: bool
) -> None:
    """Without the policy, PaxJob rights are pod rights: an admin who turns it off is told so at install
    (the NOTES said nothing). The CRD note names both CRDs (it named the PaxJob one only)."""
    r = helm("install", "notes", str(CHART), f"--namespace={restricted_namespace}", "--dry-run=server",
             f"--set=admissionPolicy.create={str(policy).lower()}", "--set=namespace.labelHook=false",
             kubeconfig=control_plane.kubeconfig)  # fmt: skip
    warned = "WARNING: admissionPolicy.create is false" in r.stdout
    assert warned is not policy, r.stdout
    assert ("is admitted only if its author may create those pods" in r.stdout) is policy, r.stdout
    assert "kubectl apply -f charts/pax-operator/crds/\n" in r.stdout, r.stdout


def test_the_label_hook_never_overwrites_an_admins_pod_security_level(
    helm: Helm, control_plane: ControlPlane, namespace: str, kubectl
) -> None:
    """A namespace the admin labelled `enforce: privileged` (a node agent lives there) had the label
    overwritten to `restricted` by the hook, and every other workload's next pod there was refused. Only
    absent labels are added now, and the NOTES say which were kept."""
    kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged", check=True)
    r = helm("install", "kept", str(CHART), f"--namespace={namespace}", "--dry-run=server",
             kubeconfig=control_plane.kubeconfig)  # fmt: skip
    manifests = r.stdout.split("NOTES:")[0].split("HOOKS:")[-1]
    (job,) = [d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Job"]
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["LABELS"]) == {"pod-security.kubernetes.io/enforce-version": "latest"}
    notes = r.stdout.split("NOTES:")[1]
    assert f"Namespace {namespace} keeps its own Pod Security labels" in notes, notes
    assert "(pod-security.kubernetes.io/enforce=privileged)" in notes, notes


def test_the_label_hook_leaves_a_namespace_with_other_workloads_alone(
    helm: Helm, control_plane: ControlPlane, core: client.CoreV1Api, namespace: str
) -> None:
    """Installed into a namespace that other workloads use (`-n kube-system`, `-n default`), the hook
    labelled it `enforce: restricted`, and the next pod of every privileged DaemonSet there (CNI, CSI, kube-
    proxy) would be refused. A namespace holding pods of anything but this release is not labelled; the
    NOTES say so, name some of those pods, and warn that whoever may create pods there may act as the
    operator."""
    agent = {"name": "node-agent", "image": "agent:1", "securityContext": {"privileged": True}}
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "node-agent"}, "spec": {"containers": [agent]}}
    )
    r = helm("install", "shared", str(CHART), f"--namespace={namespace}", "--dry-run=server",
             kubeconfig=control_plane.kubeconfig)  # fmt: skip
    manifests, notes = r.stdout.split("NOTES:")
    assert "label-namespace" not in manifests, manifests
    assert f"WARNING: namespace {namespace} holds 1 pod(s) of other workloads (node-agent)" in notes, notes
    assert "may act as the operator" in notes, notes
    assert "The namespace was NOT labelled for Pod Security" in notes, notes


@pytest.fixture
def release(helm: Helm, control_plane: ControlPlane, restricted_namespace: str) -> Iterator[str]:
    """A unique release name (its cluster-scoped objects are named after it); uninstalled at teardown."""
    name = f"pax-{secrets.token_hex(3)}"
    yield name
    helm("uninstall", name, f"--namespace={restricted_namespace}", "--ignore-not-found",
         kubeconfig=control_plane.kubeconfig, check=False)  # fmt: skip


def test_install_upgrade_uninstall(
    helm: Helm, control_plane: ControlPlane, restricted_namespace: str, namespace: str, release: str, kubectl
) -> None:
    ns = restricted_namespace
    kc = control_plane.kubeconfig
    fullname = f"{release}-pax-operator"
    sa = f"system:serviceaccount:{ns}:{fullname}"

    def get(*what: str) -> subprocess.CompletedProcess[str]:
        return kubectl("get", *what, "-o", "json")

    def can_i(verb: str, resource: str, where: str) -> bool:
        return kubectl("auth", "can-i", verb, resource, f"--namespace={where}", f"--as={sa}").returncode == 0

    # install (pods stay Pending: no kubelet here) into a PodSecurity "restricted" namespace.
    r = helm("install", release, str(CHART), f"--namespace={ns}", "--set=verbose=true", kubeconfig=kc)
    assert "violate PodSecurity" not in r.stderr, r.stderr
    assert f"Deployment {fullname}" in r.stdout  # NOTES.txt
    kubectl("wait", "--for=condition=Established", "crd/paxjobs.pax.dev", "--timeout=30s", check=True)
    for obj in (f"serviceaccount/{fullname}", f"deployment/{fullname}"):
        assert get(obj, f"--namespace={ns}").returncode == 0, obj
    for obj in ("clusterrole", "clusterrolebinding"):
        assert get(f"{obj}/{fullname}").returncode == 0, obj
    for suffix in ("paxjob-editor", "paxjob-viewer"):
        assert get(f"clusterrole/{fullname}-{suffix}").returncode == 0, suffix
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        assert get(f"{kind}/{fullname}-paxjob-pod-authority").returncode == 0, kind
    # No deployment controller runs here, so admit the pod template by hand: a server-side dry run goes
    # through PodSecurity admission, which this namespace enforces at "restricted".
    deployment = json.loads(get(f"deployment/{fullname}", f"--namespace={ns}").stdout)
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": fullname, **template["metadata"]}}
    pod["spec"] = template["spec"]
    admitted = kubectl("create", "--dry-run=server", f"--namespace={ns}", "-f", "-", input=json.dumps(pod))
    assert admitted.returncode == 0, admitted.stderr
    assert "Warning" not in admitted.stderr, admitted.stderr
    root = {**pod, "spec": {**pod["spec"], "securityContext": {}}}  # the check is not vacuous
    rejected = kubectl("create", "--dry-run=server", f"--namespace={ns}", "-f", "-", input=json.dumps(root))
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr, rejected.stderr
    procs.wait_for(
        "the ClusterRoleBinding to take effect", lambda: can_i("create", "pods", namespace), WAIT_S
    )
    assert not can_i("get", "secrets", namespace)

    # upgrade as docs/install.md says (the install's values kept, the chart's defaults for the rest): watch
    # one namespace; its rights move into a Role there.
    helm("upgrade", release, str(CHART), f"--namespace={ns}", "--reset-then-reuse-values", "--set=workers=7",
         f"--set=watchNamespaces={{{namespace}}}", kubeconfig=kc)  # fmt: skip
    deployment = json.loads(get(f"deployment/{fullname}", f"--namespace={ns}").stdout)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--workers=7" in args
    assert "--verbose" in args  # set at install
    assert f"--namespace={namespace}" in args
    assert get(f"role/{fullname}", f"--namespace={namespace}").returncode == 0
    procs.wait_for("the cluster-wide pod rights to go", lambda: not can_i("create", "pods", ns), WAIT_S)
    assert can_i("create", "pods", namespace)
    assert can_i("list", "customresourcedefinitions.apiextensions.k8s.io", namespace)
    history = json.loads(helm("history", release, f"--namespace={ns}", "-o", "json", kubeconfig=kc).stdout)
    assert [h["revision"] for h in history] == [1, 2]

    # uninstall: everything the release made is gone; the CRDs stay (Helm never deletes crds/), and with
    # them the users' PaxJobs and PaxSweeps.
    job = {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxJob",
        "metadata": {"name": "kept"},
        "spec": cpu_job(1),
    }
    kubectl("create", f"--namespace={namespace}", "-f", "-", input=json.dumps(job), check=True)
    helm("uninstall", release, f"--namespace={ns}", "--wait", "--timeout=60s", kubeconfig=kc)
    for obj, where in [
        (f"deployment/{fullname}", ns),
        (f"serviceaccount/{fullname}", ns),
        (f"role/{fullname}", namespace),
        (f"rolebinding/{fullname}", namespace),
    ]:
        assert "NotFound" in kubectl("get", obj, f"--namespace={where}").stderr, obj
    for obj in (fullname, f"{fullname}-paxjob-editor", f"{fullname}-paxjob-viewer"):
        assert "NotFound" in kubectl("get", f"clusterrole/{obj}").stderr, obj
    assert "NotFound" in kubectl("get", f"clusterrolebinding/{fullname}").stderr
    for kind in ("validatingadmissionpolicy", "validatingadmissionpolicybinding"):
        assert "NotFound" in kubectl("get", f"{kind}/{fullname}-paxjob-pod-authority").stderr, kind
    assert get("crd/paxjobs.pax.dev").returncode == 0
    assert get("crd/paxsweeps.pax.dev").returncode == 0
    assert get("paxjob/kept", f"--namespace={namespace}").returncode == 0


def test_operator_runs_with_the_charts_namespaced_rbac(
    helm: Helm,
    control_plane: ControlPlane,
    restricted_namespace: str,
    namespace: str,
    release: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    tmp_path: Path,
) -> None:
    """The real operator, as the chart's ServiceAccount with only its per-namespace Role, runs a gang; with
    the chart's --admission-policy, so its install guard passes on the chart's policy and binding."""
    helm("install", release, str(CHART), f"--namespace={restricted_namespace}",
         f"--set=watchNamespaces={{{namespace}}}", kubeconfig=control_plane.kubeconfig)  # fmt: skip
    sa_kubeconfig = control_plane.kubeconfig_for_service_account(
        restricted_namespace, f"{release}-pax-operator"
    )
    deployment = client.AppsV1Api(core.api_client).read_namespaced_deployment(
        f"{release}-pax-operator", restricted_namespace
    )
    guard = [
        a for a in deployment.spec.template.spec.containers[0].args if a.startswith("--admission-policy=")
    ]
    assert guard == [f"--admission-policy={release}-pax-operator-paxjob-pod-authority"]
    operator = OperatorProcess(sa_kubeconfig, namespace, tmp_path / "operator.log", extra_args=guard).start()
    try:
        pax = Pax(core, custom, namespace)
        pax.create("lm", cpu_job(2))
        assert len(pax.wait_pods("lm", 2, 0)) == 2
        log = operator.log_tail(400)
        for denied in ("Forbidden", "Not enough permissions"):
            assert denied not in log, log
        assert "its binding enforce" in log, log
    finally:
        operator.kill()


def _play_kubelet_for_label_hook(
    control_plane: ControlPlane, core: client.CoreV1Api, namespace: str, release: str
) -> subprocess.CompletedProcess[str]:
    """No kubelet runs here: run the hook pod's own command with this venv's python (the operator image's
    packages), as its ServiceAccount, against the real apiserver; report the pod's outcome as a kubelet
    would, so the Job completes and helm goes on."""
    selector = "app.kubernetes.io/component=label-namespace"
    pods = procs.wait_for(
        f"a label-namespace hook pod in {namespace}",
        lambda: core.list_namespaced_pod(namespace, label_selector=selector).items,
        WAIT_S,
    )
    pod = pods[0]
    (container,) = pod.spec.containers
    assert container.command[:2] == ["python", "-c"], container.command
    kubeconfig = control_plane.kubeconfig_for_service_account(namespace, pod.spec.service_account_name)
    env = {**os.environ, **{e.name: e.value for e in container.env}, "KUBECONFIG": str(kubeconfig)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    for _ in range(10):  # its ClusterRoleBinding may take a moment to reach the authorizer
        ran = subprocess.run(
            [sys.executable, "-c", container.command[2]], env=env, capture_output=True, text=True, timeout=60
        )
        if ran.returncode == 0 or "Forbidden" not in ran.stderr:
            break
        time.sleep(0.5)
    terminated = {"exitCode": ran.returncode, "reason": "Completed" if ran.returncode == 0 else "Error"}
    status = {
        "phase": "Succeeded" if ran.returncode == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})
    return ran


def test_create_namespace_gets_pod_security_labels(
    helm: Helm, control_plane: ControlPlane, core: client.CoreV1Api, kubectl
) -> None:
    """`helm install --create-namespace` labels the new namespace for PodSecurity as kustomize does."""
    namespace, release = f"pax-fresh-{secrets.token_hex(3)}", f"pax-{secrets.token_hex(3)}"
    kc = control_plane.kubeconfig
    result: list[subprocess.CompletedProcess[str]] = []
    install = threading.Thread(
        target=lambda: result.append(
            helm(
                "install",
                release,
                str(CHART),
                f"--namespace={namespace}",
                "--create-namespace",
                "--timeout=120s",
                kubeconfig=kc,
                check=False,
            )
        )
    )
    install.start()
    try:
        ran = _play_kubelet_for_label_hook(control_plane, core, namespace, release)
        assert ran.returncode == 0, ran.stderr
        install.join(timeout=HELM_TIMEOUT_S)
        assert result and result[0].returncode == 0, result[0].stderr if result else "helm still running"
        labels = core.read_namespace(namespace).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted", labels
        assert labels["pod-security.kubernetes.io/enforce-version"] == "latest", labels
        # The hook's objects are gone (hook-succeeded); the release's own are there.
        name = f"{release}-pax-operator-label-namespace"
        assert "NotFound" in kubectl("get", f"clusterrole/{name}").stderr
        assert "NotFound" in kubectl("get", f"job/{name}", f"--namespace={namespace}").stderr
        assert (
            kubectl("get", f"deployment/{release}-pax-operator", f"--namespace={namespace}").returncode == 0
        )
        # Enforced: a root pod is refused in the new namespace.
        root = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "root"},
            "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"runAsUser": 0}}]},
        }
        rejected = kubectl(
            "create", "--dry-run=server", f"--namespace={namespace}", "-f", "-", input=json.dumps(root)
        )
        assert 'violates PodSecurity "restricted:latest"' in rejected.stderr, rejected.stderr
        # An upgrade finds the labels in place: no hook this time.
        r = helm("upgrade", release, str(CHART), f"--namespace={namespace}", "--set=workers=2", kubeconfig=kc)
        assert r.returncode == 0
        assert not core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=label-namespace"
        ).items
    finally:
        install.join(timeout=HELM_TIMEOUT_S)
        helm(
            "uninstall", release, f"--namespace={namespace}", "--ignore-not-found", kubeconfig=kc, check=False
        )
        kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_hook_rendered_by_helm_template_never_overwrites_labels_nor_labels_a_shared_namespace(
    helm: Helm, control_plane: ControlPlane, core: client.CoreV1Api, kubectl
) -> None:
    """`helm template` cannot look the namespace up, so it renders the hook with every label, and GitOps tools
    (Argo CD) run it on every sync: it overwrote an admin's `enforce: privileged` on a namespace shared with a
    node agent, refusing that agent's next pods. The Job now applies the chart's rules itself when it runs."""
    namespace, release = f"pax-shared-{secrets.token_hex(3)}", f"pax-{secrets.token_hex(3)}"
    enforce = "pod-security.kubernetes.io/enforce"
    core.create_namespace({"metadata": {"name": namespace, "labels": {enforce: "privileged"}}})
    try:
        agent = {"metadata": {"name": "node-agent"}, "spec": {"containers": [{"name": "c", "image": "a"}]}}
        core.create_namespaced_pod(namespace, agent)
        rendered = helm(
            "template", release, str(CHART), f"--namespace={namespace}",
            "--show-only=templates/namespace-labels-hook.yaml",
        ).stdout  # fmt: skip
        assert "privileged" not in rendered  # no lookup: it would set every label
        kubectl("apply", f"--namespace={namespace}", "-f", "-", input=rendered, check=True)
        ran = _play_kubelet_for_label_hook(control_plane, core, namespace, release)
        assert ran.returncode == 0 and "holds other pods (node-agent): not labelled" in ran.stdout, ran
        assert core.read_namespace(namespace).metadata.labels[enforce] == "privileged"
        assert f"{enforce}-version" not in core.read_namespace(namespace).metadata.labels

        core.delete_namespaced_pod("node-agent", namespace, grace_period_seconds=0)  # unscheduled: gone now
        ran = _play_kubelet_for_label_hook(control_plane, core, namespace, release)
        assert ran.returncode == 0, ran.stderr
        labels = core.read_namespace(namespace).metadata.labels
        assert labels[enforce] == "privileged", labels  # the admin's value stays
        assert labels[f"{enforce}-version"] == "latest", labels  # a missing one is added
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
        for kind in ("clusterrole", "clusterrolebinding"):
            kubectl("delete", kind, f"{release}-pax-operator-label-namespace", "--ignore-not-found")


def test_renaming_a_release_on_upgrade_is_not_taken_for_another_install(
    helm: Helm, control_plane: ControlPlane, restricted_namespace: str, namespace: str
) -> None:
    """`helm upgrade --set fullnameOverride=...` renames the binding: the overlap check took the release's own
    old binding for another install, refusing the upgrade; a binding helm made for this release is its own."""
    kc, release = control_plane.kubeconfig, f"pax-{secrets.token_hex(3)}"
    common = [f"--namespace={restricted_namespace}", f"--set=watchNamespaces={{{namespace}}}"]
    try:
        helm("install", release, str(CHART), *common, kubeconfig=kc)
        renamed = helm("upgrade", release, str(CHART), *common, "--set=fullnameOverride=pax-renamed",
                       kubeconfig=kc, check=False)  # fmt: skip
        assert renamed.returncode == 0, renamed.stderr
    finally:
        helm("uninstall", release, f"--namespace={restricted_namespace}", kubeconfig=kc, check=False)


def test_the_operator_image_can_be_pinned_by_digest(helm: Helm) -> None:
    digest = "sha256:" + "0123456789abcdef" * 4
    docs = render(helm, f"--set=image.digest={digest}", "--set=image.tag=ignored")
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "Job")
              for c in d["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert images == {f"pax-on-kubernetes/operator@{digest}"}
    refused = helm("template", "t", str(CHART), "--set=image.digest=latest", check=False)
    assert refused.returncode != 0 and "/image/digest" in refused.stderr, refused.stderr


def test_a_second_install_watching_the_same_namespaces_is_refused(
    helm: Helm, control_plane: ControlPlane, restricted_namespace: str, namespace: str, kubectl
) -> None:
    """Two operators watching one namespace would both create gangs for its PaxJobs: `helm install` of the
    second fails (the chart looks the other installs' bindings up); disjoint installs and upgrades pass."""
    kc = control_plane.kubeconfig
    first, second, third = (f"pax-{secrets.token_hex(3)}" for _ in range(3))
    installed = [first]
    try:
        helm("install", first, str(CHART), f"--namespace={restricted_namespace}",
             f"--set=watchNamespaces={{{namespace}}}", kubeconfig=kc)  # fmt: skip
        name = f"validatingadmissionpolicybinding/{first}-pax-operator-paxjob-pod-authority"
        binding = json.loads(kubectl("get", name, "-o", "json", check=True).stdout)
        assert binding["metadata"]["annotations"]["pax.dev/watch-namespaces"] == namespace
        # A cluster-wide install beside the namespaced one.
        r = helm(
            "install", second, str(CHART), f"--namespace={restricted_namespace}", kubeconfig=kc, check=False
        )
        assert r.returncode != 0
        assert (
            f"another pax-operator install (ValidatingAdmissionPolicyBinding {first}-pax-operator-"
            in r.stderr
        )
        assert f"pax.dev/watch-namespaces={namespace})" in r.stderr, r.stderr
        assert "Uninstall it, or give both disjoint watchNamespaces" in r.stderr
        assert helm(
            "status", second, f"--namespace={restricted_namespace}", kubeconfig=kc, check=False
        ).returncode
        # Namespaced, overlapping in one of two namespaces.
        both = f"--set=watchNamespaces={{{restricted_namespace},{namespace}}}"
        r = helm("install", second, str(CHART), f"--namespace={restricted_namespace}", both, kubeconfig=kc,
                 check=False)  # fmt: skip
        assert r.returncode != 0 and "another pax-operator install" in r.stderr, r.stderr
        # Disjoint: installed; and the first release upgrades (its own binding is not another install).
        installed.append(third)
        helm("install", third, str(CHART), f"--namespace={restricted_namespace}",
             f"--set=watchNamespaces={{{restricted_namespace}}}", kubeconfig=kc)  # fmt: skip
        helm("upgrade", first, str(CHART), f"--namespace={restricted_namespace}", "--reset-then-reuse-values",
             "--set=workers=3", kubeconfig=kc)  # fmt: skip
    finally:
        for release in installed:
            helm("uninstall", release, f"--namespace={restricted_namespace}", "--ignore-not-found",
                 kubeconfig=kc, check=False)  # fmt: skip
