#!/bin/bash
. "$(dirname "$0")/common.sh"
record "$@"
fail_if restore
hold_if restore
dir=$1
ls "$dir"/snapshot_*.db >/dev/null 2>&1 || { echo "no snapshot in $dir" >&2; exit 1; }
ls "$dir"/static_kuberesources_*.tar.gz >/dev/null 2>&1 || { echo "no static resources in $dir" >&2; exit 1; }
touch "$STATE/restored"
# The control plane comes back with new containers, unless it is wedged (never-restart).
if [ ! -e "$STATE/never-restart" ]; then
  rm -f "$STATE/containers-down"
  echo $(( $(gen) + 1 )) > "$STATE/container-gen"
fi
echo "restore complete"
