#!/bin/bash
# Writes what the real script writes: an etcd snapshot and the static pod resources tarball.
# Arguments as cluster-etcd-operator's bindata/etcd/cluster-backup.sh takes them:
# `[--force] <path-to-backup-dir>`; --force marks the snapshot __POSSIBLY_DIRTY__.
. "$(dirname "$0")/common.sh"
record "$@"
fail_if backup
hold_if backup
dirty=""
if [ "$1" == "--force" ]; then
  dirty="__POSSIBLY_DIRTY__"
  shift
fi
if [ -z "$1" ] || [ -f "$1" ] || [ $# -ne 1 ]; then
  echo 'Path to backup dir required: ./cluster-backup.sh [--force] <path-to-backup-dir>'
  exit 1
fi
dir=$1
mkdir -p "$dir"
ts=$(date -u +%Y-%m-%d_%H%M%S)
head -c 65536 /dev/urandom > "$dir/snapshot_$ts$dirty.db"
tar czf "$dir/static_kuberesources_$ts.tar.gz" -C "$FAKE_DIR" state 2>/dev/null
echo "snapshot db and kube resources are successfully saved to $dir"
