#!/usr/bin/env bash
# Build the images of deploy/image/Containerfile with podman, offline, from the static release
# build (deploy/build-static.sh, or $RECOVERYD_BIN_DIR), stripped:
#
#   deploy/image/build.sh [NAME_PREFIX]     # default NAME_PREFIX: localhost/recoveryd
#
# prints the two references on stdout, the Job's image first:
#   NAME_PREFIX/recoveryctl:VERSION   (stage "job": recoveryctl alone)
#   NAME_PREFIX/binaries:VERSION      (stage "binaries": both binaries, for the RHCOS installer)
# Push them, and use them by digest (podman push --digestfile): the Job's `image:` and the
# MachineConfig generator's --binaries-image.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
prefix=${1:-localhost/recoveryd}
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
bindir=${RECOVERYD_BIN_DIR:-$("$root/deploy/build-static.sh")}
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in recoveryd recoveryctl; do
  if readelf -l "$bindir/$b" | grep -q 'Requesting program interpreter'; then
    echo "deploy/image/build.sh: $bindir/$b is dynamically linked: a FROM-scratch image needs the static build" >&2
    exit 1
  fi
  strip -o "$ctx/$b" "$bindir/$b"
done
for stage in job binaries; do
  name=$prefix/$([ "$stage" = job ] && echo recoveryctl || echo binaries):$version
  podman build --quiet --pull=never --network=none --target "$stage" \
    --label "org.opencontainers.image.version=$version" \
    -t "$name" -f "$root/deploy/image/Containerfile" "$ctx" >/dev/null
  echo "$name"
done
