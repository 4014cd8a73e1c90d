#!/usr/bin/env bash
# Builds what `make conformance` needs beyond the envtest assets, into
# bin/k8s/<version>/: kubelet, kube-controller-manager, kube-scheduler,
# kube-proxy, agnhost (the image the upstream suite runs its probes with),
# e2e.test (the upstream suite) and ginkgo (the CLI that runs e2e.test's specs
# in parallel processes), then prints that directory on stdout.
#
# Same recipe as hack/envtest-assets.sh (which this runs first for
# kube-apiserver, etcd and kubectl): hack/lib/k8s-build.sh. e2e.test is
# `go test -c` of k8s.io/kubernetes/test/e2e.
#
# Cold: about 12 minutes on 2 cores; e2e.test grows the Go build cache by ~7 GB.
# Idempotent: binaries that are already present are not rebuilt.
# Usage: hack/conformance-assets.sh [K8S_VERSION]
set -euo pipefail

K8S_VERSION=${1:-${K8S_VERSION:-1.37.2}}
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/lib/k8s-build.sh
. "$root/hack/lib/k8s-build.sh"
out="$root/bin/k8s/$K8S_VERSION"

K8S_VERSION=$K8S_VERSION "$root/hack/envtest-assets.sh" >/dev/null

want=(kubelet kube-controller-manager kube-scheduler kube-proxy agnhost e2e.test ginkgo)
missing=()
for c in "${want[@]}"; do [ -x "$out/$c" ] || missing+=("$c"); done

log() { echo "conformance-assets: $*" >&2; }

if [ ${#missing[@]} -gt 0 ]; then
  log "building ${missing[*]} from k8s.io/kubernetes v$K8S_VERSION; this takes minutes cold"
  k8s_build "$out" "$K8S_VERSION" "${missing[@]}"
fi

echo "$out"
