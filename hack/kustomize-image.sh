#!/usr/bin/env bash
# Renders a kustomization of config/ with the agent's image replaced by IMG, and
# prints the YAML on stdout, without editing the tree: a throwaway overlay in a
# temporary directory takes DIR as its base and overrides the image.
#
# Usage: hack/kustomize-image.sh DIR [IMG]
#   DIR  config/default, config/prometheus or config/cleanup
#   IMG  repo[:tag] or repo@sha256:digest; default: the image DIR names
#        (ghcr.io/nftpolicy/nftpolicy:latest)
# $KUBECTL picks the kubectl (default: the one hack/envtest-assets.sh builds,
# else kubectl on PATH).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:?usage: hack/kustomize-image.sh DIR [IMG]}
img=${2:-}
base=ghcr.io/nftpolicy/nftpolicy # the name config/default and config/cleanup set

kubectl=${KUBECTL:-$root/bin/k8s/${K8S_VERSION:-1.37.2}/kubectl}
[ -x "$kubectl" ] || kubectl=kubectl

dir=$(cd "$dir" && pwd)
if [ -z "$img" ]; then
  exec "$kubectl" kustomize "$dir"
fi

# Split IMG the way the container runtimes read it: a digest after '@', else a
# tag after the last ':' unless that ':' belongs to a registry host:port.
name=$img tag='' digest=
if [[ $img == *@* ]]; then
  name=${img%%@*} digest=${img#*@}
elif [[ ${img##*:} != "$img" && ${img##*:} != */* ]]; then
  name=${img%:*} tag=${img##*:}
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "resources:"
  # kustomize refuses absolute paths for a base.
  echo "- $(realpath --relative-to="$work" "$dir")"
  echo "images:"
  echo "- name: $base"
  echo "  newName: $name"
  [ -z "$tag" ] || echo "  newTag: \"$tag\""
  [ -z "$digest" ] || echo "  digest: $digest"
} >"$work/kustomization.yaml"
"$kubectl" kustomize "$work"
