# Sourced by hack/envtest-assets.sh and hack/conformance-assets.sh: builds
# Kubernetes binaries of one release from Go modules.
#
# The recipe: a throwaway main module requires k8s.io/kubernetes and replaces
# each staging module that k8s.io/kubernetes requires at v0.0.0 with the
# published v0.<minor>.<patch> of the same release (1.37.2 -> v0.37.2). A
# tools.go imports every package to build, so that tidy resolves their
# dependencies; it is never compiled.

# k8s_pkg NAME: the package that builds binary NAME.
k8s_pkg() {
  case "$1" in
    agnhost) echo k8s.io/kubernetes/test/images/agnhost ;;
    e2e.test) echo k8s.io/kubernetes/test/e2e ;;     # go test -c
    ginkgo) echo github.com/onsi/ginkgo/v2/ginkgo ;; # the version k8s.io/kubernetes requires
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

# k8s_build OUT VERSION NAME...: builds each NAME of Kubernetes VERSION
# (without the v) into OUT, static and with the version stamped, at low CPU
# priority. A binary appears only when complete (built to NAME.tmp, renamed).
k8s_build() {
  local out=$1 version=$2
  shift 2
  local work
  work=$(mktemp -d)
  (
    trap 'rm -rf "$work"' EXIT
    cd "$work"
    printf 'module nftpolicy.local/k8sbuild\n\ngo 1.26\n' > go.mod
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for c in "$@"; do printf '\t_ "%s"\n' "$(k8s_pkg "$c")"; done
      printf ')\n'
    } > tools.go
    export GOFLAGS=-mod=mod
    go mod edit -require="k8s.io/kubernetes@v$version"
    local modfile
    modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$version.mod"
    [ -f "$modfile" ] || go mod download "k8s.io/kubernetes@v$version"
    local m
    for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$modfile" | sort -u); do
      go mod edit -replace="$m=$m@v0.${version#1.}"
    done
    go mod tidy -e >/dev/null 2>&1 || true
    local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/client-go/pkg/version.gitVersion=v$version"
    local c pkg build
    for c in "$@"; do
      pkg=$(k8s_pkg "$c")
      build=build
      # go test -c also runs vet, and vet's facts need every package e2e.test
      # imports analysed: minutes of work that change nothing in the binary.
      [ "$c" = e2e.test ] && build="test -c -vet=off"
      echo "k8s-build: go $build $pkg" >&2
      # shellcheck disable=SC2086 # $build is several words for e2e.test
      CGO_ENABLED=0 nice -n 10 go $build -trimpath -ldflags "$ldflags" -o "$out/$c.tmp" "$pkg"
      mv "$out/$c.tmp" "$out/$c"
    done
  )
}
