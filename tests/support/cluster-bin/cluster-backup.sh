#!/bin/bash
# Writes what the real script writes: an etcd snapshot and the static pod resources tarball.
# Arguments, file names, output lines and exit codes as cluster-etcd-operator's
# bindata/etcd/cluster-backup.sh: `[--force] <path-to-backup-dir>`; --force marks the snapshot
# __POSSIBLY_DIRTY__. With ../etcd.env (as the real script sources etcd.env) the snapshot is a
# real `etcdctl snapshot save` of the running etcd; without it, random bytes.
set -o errexit
set -o pipefail
set -o errtrace
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
ts=$(date -u +%F_%H%M%S)
BACKUP_TAR_FILE=$dir/static_kuberesources_$ts.tar.gz
SNAPSHOT_FILE=$dir/snapshot_$ts$dirty.db
trap 'rm -f "$BACKUP_TAR_FILE" "$SNAPSHOT_FILE"' ERR
for r in kube-apiserver-pod kube-controller-manager-pod kube-scheduler-pod etcd-pod; do
  echo "found latest $r: $FAKE_DIR/static-pod-resources/$r-3"
done
tar czf "$BACKUP_TAR_FILE" -C "$FAKE_DIR" state 2>/dev/null
if [ -f "$FAKE_DIR/etcd.env" ]; then
  . "$FAKE_DIR/etcd.env"
  ETCDCTL_API=3 etcdctl --endpoints="$ETCDCTL_ENDPOINTS" snapshot save "$SNAPSHOT_FILE"
else
  head -c 65536 /dev/urandom > "$SNAPSHOT_FILE"
fi
echo "snapshot db and kube resources are successfully saved to $dir"
