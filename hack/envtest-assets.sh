#!/usr/bin/env bash
# Builds the control-plane binaries envtest needs (kube-apiserver, etcd) and a
# matching kubectl from Go modules, into bin/k8s/<version>/, and prints that
# directory (the KUBEBUILDER_ASSETS path) on stdout.
#
# Why from source: this project's machines reach only the Go module proxy and
# Debian's packages, so the usual envtest download cannot work. The recipe is
# in hack/lib/k8s-build.sh; etcd's server module is itself package main.
#
# Idempotent: binaries that are already present are not rebuilt.
# Usage: hack/envtest-assets.sh [K8S_VERSION] [ETCD_VERSION]
set -euo pipefail

K8S_VERSION=${1:-${K8S_VERSION:-1.37.2}}
ETCD_VERSION=${2:-${ETCD_VERSION:-3.7.3}}

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/lib/k8s-build.sh
. "$root/hack/lib/k8s-build.sh"
out="$root/bin/k8s/$K8S_VERSION"
mkdir -p "$out"

want=(kube-apiserver kubectl)
missing=()
for c in "${want[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done

log() { echo "envtest-assets: $*" >&2; }

if [ ${#missing[@]} -gt 0 ]; then
  log "building ${missing[*]} from k8s.io/kubernetes v$K8S_VERSION; this takes minutes cold"
  k8s_build "$out" "$K8S_VERSION" "${missing[@]}"
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
