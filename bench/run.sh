#!/usr/bin/env bash
# Build the static release binaries (as shipped) and run the data-path benchmark (as root),
# with its peers installed: rsync, restic, borg. See bench/bench.py; `--daemon` measures the
# daemon's memory at rest instead (bench/daemon_rss.py).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for p in rsync restic borgbackup time; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
RECOVERYCTL=$(deploy/build-static.sh)/recoveryctl
export RECOVERYCTL
# `--daemon`: the daemon's resident memory at rest instead (bench/daemon_rss.py).
if [[ ${1:-} == --daemon ]]; then
  shift
  exec python3 bench/daemon_rss.py "$@"
fi
exec python3 bench/bench.py "$@"
