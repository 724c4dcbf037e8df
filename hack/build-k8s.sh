#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and helm from the wrapper modules in
# tools/ into ${PAX_K8S_CACHE:-~/.cache/pax-k8s}/<k8s version>/. Idempotent: a component is rebuilt only
# when its stamp (versions, go.mod/go.sum, Go version, flags) changed. Safe to run concurrently (flock).
# Usage: hack/build-k8s.sh [all|etcd|k8s|helm]   (default all; `make lint` builds only helm)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=k8s-versions.env
source hack/k8s-versions.env
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly"  # go.mod/go.sum are committed

cache_root="${PAX_K8S_CACHE:-$HOME/.cache/pax-k8s}"
bin_dir="$cache_root/$K8S_VERSION"
mkdir -p "$bin_dir"
exec 9>"$cache_root/.lock"
flock 9
start=$SECONDS
only=${1:-all}
case "$only" in all | etcd | k8s | helm) ;; *) echo "usage: $0 [all|etcd|k8s|helm]" >&2; exit 2 ;; esac
want() { [ "$only" = all ] || [ "$only" = "$1" ]; }

stamp_of() { # $1 = tools subdir, rest = extra stamp text
  local dir=$1; shift
  { go env GOVERSION; cat "tools/$dir/go.mod" "tools/$dir/go.sum"; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1
}

have() { # $1 = stamp name, $2 = stamp value, rest = binaries
  local name=$1 value=$2; shift 2
  [ "$(cat "$bin_dir/.stamp-$name" 2>/dev/null)" = "$value" ] || return 1
  local b; for b in "$@"; do [ -x "$bin_dir/$b" ] || return 1; done
}

build() { # $1 = tools subdir, $2 = stamp, $3 = ldflags, $4 = output name ("" = per package), rest = packages
  local dir=$1 stamp=$2 ldflags=$3 out=$4; shift 4
  local tmp; tmp=$(mktemp -d "$bin_dir/.build.XXXXXX")
  local t0=$SECONDS
  (cd "tools/$dir" && go build -p 2 -trimpath -tags=notest -ldflags="$ldflags" -o "$tmp/$out" "$@")
  local f; for f in "$tmp"/*; do mv -f "$f" "$bin_dir/"; done
  rmdir "$tmp"
  echo "$stamp" >"$bin_dir/.stamp-$dir"
  echo "built ${out:-${*##*/}} in $((SECONDS - t0))s"
}

ensure() { # $1 = tools subdir, $2 = version, $3 = ldflags, $4 = binaries, $5 = what to say, rest = build's $4...
  local dir=$1 version=$2 ldflags=$3 bins=$4 what=$5; shift 5
  want "$dir" || return 0
  local stamp; stamp=$(stamp_of "$dir" "$version" "$ldflags")
  # shellcheck disable=SC2086  # $bins is a space-separated list
  if have "$dir" "$stamp" $bins; then
    echo "$dir $version: up to date"
  else
    echo "building $what"
    build "$dir" "$stamp" "$ldflags" "$@"
  fi
}

etcd_ldflags="-s -w"
ensure etcd "$ETCD_VERSION" "$etcd_ldflags" etcd "etcd $ETCD_VERSION" etcd go.etcd.io/etcd/server/v3


# /version must report the real version: a module build has no VCS stamp, so set what upstream's
# kube::version::ldflags sets, for both packages that carry it.
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  k8s_ldflags+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
  k8s_ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
done
ensure k8s "$K8S_VERSION" "$k8s_ldflags" "kube-apiserver kube-controller-manager kube-scheduler" \
  "kube-apiserver, kube-controller-manager, kube-scheduler $K8S_VERSION (cold: ~8-9 min on 2 cores; ~20 s with a warm GOCACHE)" \
  "" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler

# helm: a module build reports the placeholder "v3.22" and a default Kubernetes of v1.20, so set what
# upstream's Makefile sets: the version, and the k8s minor of the client-go it was built with (the
# default .Capabilities.KubeVersion for `helm template`/`lint`, and lint's deprecation cut-off).
helm_k8s_minor=$(awk '$1 == "k8s.io/client-go" {split($2, v, "."); print v[2]}' tools/helm/go.mod)
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$helm_k8s_minor"
done
ensure helm "$HELM_VERSION" "$helm_ldflags" helm "helm $HELM_VERSION (cold: ~2 min on 2 cores; seconds with a warm GOCACHE)" \
  helm helm.sh/helm/v3/cmd/helm

echo "binaries ($only) in $bin_dir ($((SECONDS - start))s)"
