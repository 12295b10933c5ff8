#!/usr/bin/env bash
# Build the release binaries statically linked, and print the directory they are in.
#
#   deploy/build-static.sh [more cargo build arguments, e.g. --example fake-rpm-ostreed]
#
# glibc's static libraries (libc6-dev, glibc-static on Fedora) and crt-static: the binaries need
# no libc on the machine that runs them, so the same files go into the RPM (rpm/build.sh), the
# FROM-scratch images (deploy/image/) and /usr/local/bin of an RHCOS node that does not layer
# the RPM (deploy/rhcos/), whatever that node's glibc. recoveryd resolves no user or host names
# (no NSS), which is what glibc cannot do statically.
#
# The flag is given for the target only (--target), so build scripts and proc-macros stay
# dynamic, as they must; the output is therefore under target/<triple>/release.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
case "$triple" in
  *-linux-gnu) ;;
  *) echo "deploy/build-static.sh: $triple is not a glibc target" >&2; exit 1 ;;
esac
var=CARGO_TARGET_$(printf '%s' "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS
export "$var=-C target-feature=+crt-static"
(cd "$root" && cargo build --quiet --release --bins --target "$triple" "$@" >&2)
dir=${CARGO_TARGET_DIR:-$root/target}/$triple/release
case "$dir" in /*) ;; *) dir=$root/$dir ;; esac
# A dynamic binary here would be a build that ignored the flag (RUSTFLAGS set, say).
for b in recoveryd recoveryctl; do
  if readelf -l "$dir/$b" | grep -q 'Requesting program interpreter'; then
    echo "deploy/build-static.sh: $dir/$b is dynamically linked (is RUSTFLAGS set?)" >&2
    exit 1
  fi
done
echo "$dir"
