#!/bin/bash
# cluster-etcd-operator's bindata/etcd/cluster-restore.sh as it runs on a single node
# (ETCD_ETCDCTL_RESTORE set): newest snapshot and static resources of <path-to-backup>, etcd
# stopped (here its systemd unit, there its static pod), the old member moved to the backup
# dir, `etcdctl snapshot restore` into an empty data dir, etcd started again. Same file names,
# output lines and exit codes. With ../etcd.env the etcd is real; without it, only the checks.
set -o errexit
set -o pipefail
set -o errtrace
. "$(dirname "$0")/common.sh"
record "$@"
fail_if restore
hold_if restore
usage() {
  echo 'Path to the directory containing backup files is required: ./cluster-restore.sh <path-to-backup>'
  echo 'The backup directory is expected to be contain two files:'
  echo '        1. etcd snapshot'
  echo '        2. A copy of the Static POD resources at the time of backup'
  exit 1
}
if [ "$1" == "" ] || [ ! -d "$1" ]; then
  usage
fi
BACKUP_DIR=$1
# shellcheck disable=SC2012
BACKUP_FILE=$(ls -vd "$BACKUP_DIR"/static_kuberesources*.tar.gz 2>/dev/null | tail -1) || true
# shellcheck disable=SC2012
SNAPSHOT_FILE=$(ls -vd "$BACKUP_DIR"/snapshot*.db 2>/dev/null | tail -1) || true
if [ ! -f "$SNAPSHOT_FILE" ]; then
  echo "etcd snapshot $SNAPSHOT_FILE does not exist"
  exit 1
fi
if [ ! -f "$BACKUP_FILE" ]; then
  echo "static pod resources $BACKUP_FILE do not exist"
  exit 1
fi
if [ -f "$FAKE_DIR/etcd.env" ]; then
  . "$FAKE_DIR/etcd.env"
  ETCDCTL_API=3 etcdctl snapshot status "$SNAPSHOT_FILE" -w table
  systemctl stop "$ETCD_UNIT"
  mkdir -p "$ETCD_DATA_DIR_BACKUP"
  if [ -d "$ETCD_DATA_DIR/member" ]; then
    if [ -d "$ETCD_DATA_DIR_BACKUP/member" ]; then
      echo "removing previous backup $ETCD_DATA_DIR_BACKUP/member"
      rm -rf "$ETCD_DATA_DIR_BACKUP"/member
    fi
    echo "Moving etcd data-dir $ETCD_DATA_DIR/member to $ETCD_DATA_DIR_BACKUP"
    mv "$ETCD_DATA_DIR"/member "$ETCD_DATA_DIR_BACKUP"/
  fi
  echo "removing etcd data dir..."
  rm -rf "$ETCD_DATA_DIR"
  echo "starting snapshot restore through etcdctl..."
  # etcd 3.4's etcdctl refuses an existing data dir: restore beside it, then move it in.
  rm -rf "$ETCD_DATA_DIR.restore"
  if ! ETCDCTL_API=3 etcdctl snapshot restore "$SNAPSHOT_FILE" --data-dir="$ETCD_DATA_DIR.restore" \
      --name "$ETCD_NAME" --initial-cluster "$ETCD_INITIAL_CLUSTER" \
      --initial-advertise-peer-urls "$ETCD_INITIAL_ADVERTISE_PEER_URLS"; then
    echo "Snapshot restore failed. Aborting!"
    exit 1
  fi
  mv "$ETCD_DATA_DIR.restore" "$ETCD_DATA_DIR"
  chown -R "$ETCD_USER" "$ETCD_DATA_DIR"
  echo "restoring old etcd pod to start etcd again"
  systemctl start "$ETCD_UNIT"
fi
touch "$STATE/restored"
# The control plane comes back with new containers, unless it is wedged (never-restart).
if [ ! -e "$STATE/never-restart" ]; then
  rm -f "$STATE/containers-down"
  echo $(( $(gen) + 1 )) > "$STATE/container-gen"
fi
