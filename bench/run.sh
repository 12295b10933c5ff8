#!/usr/bin/env bash
# Build the static release binaries, strip them as they ship, and run the data-path benchmark
# (as root), with its peers installed: rsync, restic, borg. See bench/bench.py; `--daemon`
# measures the daemon's memory at rest instead (bench/daemon_rss.py).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in rsync restic borgbackup time binutils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
built=$(deploy/build-static.sh)
# Measured as they ship: the RPM (rpm/recoveryd.spec) and the images strip them. The line
# tables a release build keeps are a third of the file, and a cold start reads ahead into them
# (16.5 MiB read from disk for `--version` unstripped, 12.6 MiB stripped, on this kind of VM).
shipped=${CARGO_TARGET_DIR:-$PWD/target}/bench-bin
mkdir -p "$shipped"
for b in recoveryd recoveryctl; do
  strip --strip-unneeded -o "$shipped/$b" "$built/$b"
done
RECOVERYCTL=$shipped/recoveryctl
export RECOVERYCTL
# `--daemon`: the daemon's resident memory at rest instead (bench/daemon_rss.py).
if [[ ${1:-} == --daemon ]]; then
  shift
  exec python3 bench/daemon_rss.py "$@"
fi
exec python3 bench/bench.py "$@"
