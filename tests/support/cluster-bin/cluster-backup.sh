#!/bin/bash
# Writes what the real script writes: an etcd snapshot and the static pod resources tarball.
. "$(dirname "$0")/common.sh"
record "$@"
fail_if backup
hold_if backup
dir=${@: -1}
mkdir -p "$dir"
ts=$(date -u +%Y-%m-%d_%H%M%S)
head -c 65536 /dev/urandom > "$dir/snapshot_$ts.db"
tar czf "$dir/static_kuberesources_$ts.tar.gz" -C "$FAKE_DIR" state 2>/dev/null
echo "snapshot db and kube resources are successfully saved to $dir"
