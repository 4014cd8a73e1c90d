#!/usr/bin/env bash
# Builds what `make conformance` needs beyond the envtest assets, into
# bin/k8s/<version>/: kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy, agnhost (the image the upstream suite runs its probes with),
# e2e.test (the upstream suite) and ginkgo (the CLI that runs e2e.test's specs
# in parallel processes), then prints that directory on stdout.
#
# Same recipe as hack/envtest-assets.sh (which this runs first for
# kube-apiserver, etcd and kubectl): a throwaway main module requires
# k8s.io/kubernetes and replaces each staging module it requires at v0.0.0 with
# the published v0.<minor>.<patch>. e2e.test is `go test -c` of
# k8s.io/kubernetes/test/e2e, so tools.go imports it to let tidy see its deps.
#
# Cold: about 12 minutes on 2 cores; e2e.test grows the Go build cache by ~7 GB.
# Idempotent: binaries that are already present are not rebuilt.
# Usage: hack/conformance-assets.sh [K8S_VERSION]
set -euo pipefail

K8S_VERSION=${1:-${K8S_VERSION:-1.37.2}}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/bin/k8s/$K8S_VERSION"

K8S_VERSION=$K8S_VERSION "$root/hack/envtest-assets.sh" >/dev/null

want=(kubelet kube-controller-manager kube-scheduler kube-proxy agnhost e2e.test ginkgo)
missing=()
for c in "${want[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done

log() { echo "conformance-assets: $*" >&2; }

if [ ${#missing[@]} -gt 0 ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  staging_minor="v0.${K8S_VERSION#1.}"
  log "building ${missing[*]} from k8s.io/kubernetes v$K8S_VERSION; this takes minutes cold"
  cd "$work"
  cat > go.mod <<EOM
module nftpolicy.local/conformancebuild

go 1.26
EOM
  cat > tools.go <<'EOM'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubernetes/test/e2e"
	_ "k8s.io/kubernetes/test/images/agnhost/netexec"
	_ "github.com/onsi/ginkgo/v2/ginkgo"
)
EOM
  export GOFLAGS=-mod=mod
  go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
  modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$K8S_VERSION.mod"
  [ -f "$modfile" ] || go mod download "k8s.io/kubernetes@v$K8S_VERSION"
  for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$modfile" | sort -u); do
    go mod edit -replace="$m=$m@$staging_minor"
  done
  go mod tidy -e >/dev/null 2>&1 || true
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION"
  for c in "${missing[@]}"; do
    case "$c" in
      agnhost) pkg=k8s.io/kubernetes/test/images/agnhost ;;
      e2e.test) pkg=k8s.io/kubernetes/test/e2e ;;
      ginkgo) pkg=github.com/onsi/ginkgo/v2/ginkgo ;; # the version k8s.io/kubernetes requires
      *) pkg="k8s.io/kubernetes/cmd/$c" ;;
    esac
    log "go build $pkg"
    if [ "$c" = e2e.test ]; then
      CGO_ENABLED=0 nice -n 10 go test -c -trimpath -ldflags "$ldflags" -o "$out/$c.tmp" "$pkg"
    else
      CGO_ENABLED=0 nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$out/$c.tmp" "$pkg"
    fi
    mv "$out/$c.tmp" "$out/$c"
  done
fi

echo "$out"
