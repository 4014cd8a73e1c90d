#!/usr/bin/env bash
# Proves that the depguard layering rules in .golangci.yml bite: it drops a
# throwaway file into package nft that imports github.com/google/nftables,
# lints package nft, and succeeds only if golangci-lint rejects that import.
# The file is removed on any exit.
#
# Usage: hack/verify-depguard.sh   (GOLANGCI_LINT=path overrides bin/golangci-lint)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
lint=${GOLANGCI_LINT:-$root/bin/golangci-lint}
[ -x "$lint" ] || make -s golangci-lint >&2

probe=nft/zz_depguard_probe.go
[ ! -e "$probe" ] || { echo "verify-depguard: $probe already exists" >&2; exit 1; }
trap 'rm -f "$root/$probe"' EXIT
cat > "$probe" <<'GO'
package nft

import _ "github.com/google/nftables"
GO

# Only the depguard linter, only this package: the verdict must come from the probe.
out=$("$lint" run --enable-only depguard ./nft/ 2>&1) && status=0 || status=$?
if [ "$status" -ne 0 ] && grep -q "zz_depguard_probe.go.*github.com/google/nftables.*not allowed" <<<"$out"; then
  grep "zz_depguard_probe.go" <<<"$out"
  echo "verify-depguard: OK, nft may not import github.com/google/nftables"
  exit 0
fi
echo "verify-depguard: FAIL, golangci-lint (exit $status) did not reject the probe import:" >&2
echo "$out" >&2
exit 1
