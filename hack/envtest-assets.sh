#!/usr/bin/env bash
# Builds the control-plane binaries envtest needs (kube-apiserver, etcd) and a
# matching kubectl from Go modules, into bin/k8s/<version>/, and prints that
# directory (the KUBEBUILDER_ASSETS path) on stdout.
#
# Why from source: this project's machines reach only the Go module proxy and
# Debian's packages, so the usual envtest download cannot work. The recipe:
# a throwaway main module requires k8s.io/kubernetes and replaces each staging
# module it requires at v0.0.0 with the published v0.<minor>.<patch> of the same
# release; etcd's server module is itself package main.
#
# Idempotent: binaries that are already present are not rebuilt.
# Usage: hack/envtest-assets.sh [K8S_VERSION] [ETCD_VERSION]
set -euo pipefail

K8S_VERSION=${1:-${K8S_VERSION:-1.37.2}}
ETCD_VERSION=${2:-${ETCD_VERSION:-3.7.3}}
EXTRA_CMDS=${EXTRA_CMDS:-}   # e.g. "kubelet kube-proxy" for the conformance cluster

root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/bin/k8s/$K8S_VERSION"
mkdir -p "$out"

want=(kube-apiserver kubectl $EXTRA_CMDS)
missing=()
for c in "${want[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done

log() { echo "envtest-assets: $*" >&2; }

if [ ${#missing[@]} -gt 0 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  staging_minor="v0.${K8S_VERSION#1.}"
  log "building ${missing[*]} from k8s.io/kubernetes v$K8S_VERSION (staging $staging_minor); this takes minutes cold"
  (
    cd "$work"
    cat > go.mod <<EOF
module nftpolicy.local/k8sbuild

go 1.26
EOF
    cat > tools.go <<'EOF'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver/app"
EOF
    export GOFLAGS=-mod=mod
    go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
    modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
    [ -f "$modfile" ] || go mod download "k8s.io/kubernetes@v$K8S_VERSION"
    for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$modfile" | sort -u); do
      go mod edit -replace="$m=$m@$staging_minor"
    done
    go mod tidy -e >/dev/null 2>&1 || true
    for c in "${missing[@]}"; do
      case "$c" in
        kubectl) pkg=k8s.io/kubernetes/cmd/kubectl ;;
        agnhost) pkg=k8s.io/kubernetes/test/images/agnhost ;;
        *) pkg="k8s.io/kubernetes/cmd/$c" ;;
      esac
      log "go build $pkg"
      CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION" -o "$out/$c" "$pkg"
    done
  )
fi

if [ ! -x "$out/etcd" ]; then
  work2=$(mktemp -d)
  log "building etcd v$ETCD_VERSION"
  (
    cd "$work2"
    cat > go.mod <<EOF
module nftpolicy.local/etcdbuild

go 1.26
EOF
    export GOFLAGS=-mod=mod
    go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    go mod tidy -e >/dev/null 2>&1 || true
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$work2"
fi

echo "$out"
