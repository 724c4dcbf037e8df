{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "pax-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name if it already contains the chart name, else "<release>-<chart>". */}}
{{- define "pax-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pax-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pax-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pax-operator.labels" -}}
{{ include "pax-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pax-on-kubernetes
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
The operator's ServiceAccount. Never `default`: every pod of the namespace that names no ServiceAccount runs as
it with its token, and the operator's rights (create pods with any ServiceAccount in every watched namespace)
would go to all of them.
*/}}
{{- define "pax-operator.serviceAccountName" -}}
{{- $name := "" }}
{{- if .Values.serviceAccount.create }}
{{- $name = default (include "pax-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- $name = required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- if eq $name "default" }}
{{- fail (printf "serviceAccount.name: default would give the operator's rights (create pods as any ServiceAccount in every watched namespace) to every pod of namespace %s that names no ServiceAccount; use a dedicated ServiceAccount" .Release.Namespace) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
The operator's permissions, the same as deploy/rbac/cluster_role.yaml (tests/integration/test_helm.py checks
they stay equal). Split in two so that with watchNamespaces the namespaced part becomes per-namespace Roles.
*/}}
{{- define "pax-operator.namespacedRules" -}}
# PaxJobs: watch them, write their status (PUT), delete them when their TTL expires.
- apiGroups: [pax.dev]
  resources: [paxjobs]
  verbs: [get, list, watch, delete]
- apiGroups: [pax.dev]
  resources: [paxjobs/status]
  verbs: [get, update]
# ownerReferences with blockOwnerDeletion need update on the owner's finalizers subresource.
- apiGroups: [pax.dev]
  resources: [paxjobs/finalizers]
  verbs: [update]
# PaxSweeps: watch them, write their status (PUT), delete them when their TTL expires; their trials are PaxJobs
# it creates and patches (result annotations, spec.suspend to stop a trial early).
- apiGroups: [pax.dev]
  resources: [paxsweeps]
  verbs: [get, list, watch, delete]
- apiGroups: [pax.dev]
  resources: [paxsweeps/status]
  verbs: [get, update]
- apiGroups: [pax.dev]
  resources: [paxsweeps/finalizers]
  verbs: [update]
- apiGroups: [pax.dev]
  resources: [paxjobs]
  verbs: [create, patch]
# The gang.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
# Each job's NetworkPolicy (owned by the PaxJob, garbage-collected with it).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
# Transition events on PaxJobs (core/v1; a repeat patches the count).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{- define "pax-operator.clusterRules" -}}
# kopf: resource discovery and namespace scanning.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end }}

{{/*
The release namespace's Pod Security labels as JSON {"add": {...}, "kept": {...}}: `add` holds the
namespace.podSecurityLabels the namespace lacks (all of them when it does not exist yet, or under `helm
template`), `kept` those it already sets to another value. An existing value is the cluster admin's
decision (e.g. `enforce: privileged` for a node agent sharing the namespace) and is never overwritten:
raising it would refuse the next pods of every other workload there. For the same reason a namespace that
holds pods of anything but this release (`kube-system`, `default`, a team's namespace) gets no label at all:
`others` names a few of those pods (`unlabelled`: labels were wanted), and `add` is empty.
*/}}
{{- define "pax-operator.namespaceLabels" -}}
{{- $want := .Values.namespace.podSecurityLabels | default dict }}
{{- $current := lookup "v1" "Namespace" "" .Release.Namespace | default dict }}
{{- $have := dig "metadata" "labels" dict $current }}
{{- $add := dict }}
{{- $kept := dict }}
{{- range $key, $value := $want }}
{{- if not (hasKey $have $key) }}
{{- $_ := set $add $key (toString $value) }}
{{- else if ne (get $have $key | toString) (toString $value) }}
{{- $_ := set $kept $key (get $have $key | toString) }}
{{- end }}
{{- end }}
{{- $others := list }}
{{- if $current }}
{{- range (lookup "v1" "Pod" .Release.Namespace "").items | default list }}
{{- if ne (dig "metadata" "labels" "app.kubernetes.io/instance" "" .) $.Release.Name }}
{{- $others = append $others .metadata.name }}
{{- end }}
{{- end }}
{{- end }}
{{- $unlabelled := and (gt (len $others) 0) (gt (len $add) 0) }}
{{- if $others }}
{{- $add = dict }}
{{- end }}
{{- $shown := slice $others 0 (min 3 (len $others)) }}
{{- dict "add" $add "kept" $kept "others" $shown "otherCount" (len $others) "unlabelled" $unlabelled | toJson }}
{{- end }}

{{/* The admission policy's name (and its binding's): the operator's --admission-policy. */}}
{{- define "pax-operator.policyName" -}}
{{- printf "%s-paxjob-pod-authority" (include "pax-operator.fullname" .) }}
{{- end }}

{{/*
The namespaces the operator watches, as its binding's pax.dev/watch-namespaces annotation says them: "*" for
all, else the sorted names joined by commas (operator/pax_operator/core/install.py reads it).
*/}}
{{- define "pax-operator.watchAnnotation" -}}
{{- if .Values.watchNamespaces }}
{{- .Values.watchNamespaces | uniq | sortAlpha | join "," }}
{{- else }}
{{- "*" }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when image.digest is set (what runs is then fixed), else :tag. */}}
{{- define "pax-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
