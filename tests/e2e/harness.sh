#!/usr/bin/env bash
# recoveryd end to end, under a real systemd (PID 1) in systemd-nspawn, reboots included:
# backup -> failed upgrade -> recovery -> reboot -> automatic resume, and nobody logs in.
#
# Usage: tests/e2e/harness.sh [--narrate] cycle | kill-mid-restore | breaker
#
#   cycle             the whole cycle; checks trees, units, journal, journald fields, call order
#   kill-mid-restore  the daemon is SIGKILLed while restoring /etc; after a reboot the boot unit
#                     finishes the recovery
#   breaker           the resume dies at the same step three boots in a row; the breaker stops
#                     the run with a clear message and the boot is not blocked
#
# Needs root, systemd-nspawn and mmdebstrap (tests/setup-host.sh), and the release binaries
# (built here if missing). The node gets recoveryd from the RPM's payload (rpm/build.sh).
# The Debian root file system is cached in $RECOVERYD_E2E_CACHE (default target/e2e-cache).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
NARRATE=0
if [ "${1:-}" = "--narrate" ]; then NARRATE=1; shift; fi
SCENARIO=${1:?usage: harness.sh [--narrate] cycle|kill-mid-restore|breaker}
TARGET=${CARGO_TARGET_DIR:-$PROJECT/target}
CACHE=${RECOVERYD_E2E_CACHE:-$TARGET/e2e-cache}
WORK=$(mktemp -d /var/tmp/recoveryd-e2e.XXXXXX)
ROOT=$WORK/root
CGROUP=recoveryd-e2e-$$
# The cgroup directories the container is put in: the unified hierarchy alone, or on a hybrid
# host (as when the host's PID 1 is not systemd) the unified and the named systemd one.
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
  CGROUP_DIRS=(/sys/fs/cgroup/$CGROUP)
else
  CGROUP_DIRS=(/sys/fs/cgroup/unified/$CGROUP /sys/fs/cgroup/systemd/$CGROUP)
fi
NSPAWN_PID=
# How long a boot may take to reach running or degraded.
BOOT_TIMEOUT=120
BOOT=0
export OSTREE_SYSROOT_DEBUG=mutable-deployments

# ---------------------------------------------------------------------------------------------
# Output

say() {
  if [ "$NARRATE" = 1 ]; then printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; else printf '[e2e %s] %s\n' "$SCENARIO" "$*" >&2; fi
}
detail() { printf '    %s\n' "$*" >&2; }

journal_tail() {
  if [ -d "$ROOT/var/log/journal" ]; then
    journalctl -D "$ROOT/var/log/journal" --no-pager -n "${1:-60}" -o short-monotonic 2>/dev/null || true
  fi
}

fail() {
  printf '\n[e2e %s] FAILED: %s\n' "$SCENARIO" "$*" >&2
  printf -- '--- the node journal (last lines) ---\n' >&2
  journal_tail 80 >&2
  printf -- '--- the node console (last lines) ---\n' >&2
  tail -n 20 "$WORK/console.log" 2>/dev/null >&2 || true
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Clean-up: the container, its cgroup, and the work directory, on every exit

cleanup() {
  local rc=$?
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  for cg in "${CGROUP_DIRS[@]}"; do
    [ -d "$cg" ] || continue
    [ -e "$cg/cgroup.kill" ] && echo 1 > "$cg/cgroup.kill" 2>/dev/null || true
    for _ in $(seq 1 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
  done
  if [ "${KEEP_E2E:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# The node's file system

# python3-gi and gir1.2-ostree-1.0: the fake rpm-ostreed writes the sysroot through libostree.
ROOTFS_PACKAGES="systemd,systemd-sysv,dbus,libpam-systemd,ostree,python3-gi,gir1.2-ostree-1.0,etcd-server,etcd-client"

rootfs_tarball() {
  local key
  key=$(printf '%s' "$ROOTFS_PACKAGES" | sha256sum | cut -c1-12)
  local t=$CACHE/rootfs-bookworm-$key.tar.zst
  if [ ! -s "$t" ]; then
    say "Building a Debian 12 root file system with systemd (once; cached in $CACHE)"
    mkdir -p "$CACHE"
    # mmdebstrap picks the output format from the name: keep the .tar.zst suffix.
    local partial=${t%.tar.zst}.partial.tar.zst
    mmdebstrap --quiet --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$partial" \
      http://deb.debian.org/debian >"$WORK/mmdebstrap.log" 2>&1 || { rm -rf "$partial"; cat "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap failed"; }
    mv "$partial" "$t"
  fi
  echo "$t"
}

# Always asked of cargo (a no-op when they are current), so that a stale build is never tested.
# The static release build (deploy/build-static.sh), as the RPM ships it.
binaries() {
  BIN_DIR=$("$PROJECT/deploy/build-static.sh" --example fake-rpm-ostreed)
  export RECOVERYD_BIN_DIR=$BIN_DIR
}

# recoveryd exactly as the RPM installs it: the package is built from the release binaries
# (rpm/build.sh) and its payload unpacked into the node, so the package is what is tested.
install_recoveryd() {
  "$PROJECT/rpm/build.sh" "$WORK/rpm" >"$WORK/rpm-build.log" 2>&1 \
    || { cat "$WORK/rpm-build.log" >&2; fail "building the RPM"; }
  local rpm
  rpm=$(find "$WORK/rpm" -name 'recoveryd-[0-9]*.rpm' ! -name '*.src.rpm' | head -1)
  [ -n "$rpm" ] || fail "rpm/build.sh produced no recoveryd package"
  detail "installing $(basename "$rpm") (its payload, via rpm2cpio)"
  (cd "$ROOT" && rpm2cpio "$rpm" | cpio -idm --quiet)
  # What the package's %post does (rpm2cpio runs no scriptlets).
  systemctl --root="$ROOT" preset recoveryd.service recoveryd.socket recoveryd-resume.service >/dev/null 2>&1
}

build_sysroot() {
  local s=$ROOT/sysroot t=$WORK/ostree-tree
  mkdir -p "$s" "$t/usr/bin" "$t/usr/lib/modules/6.1.0-test" "$t/usr/etc"
  ostree admin init-fs "$s" >/dev/null
  ostree admin os-init --sysroot="$s" testos >/dev/null
  echo k > "$t/usr/lib/modules/6.1.0-test/vmlinuz"; echo i > "$t/usr/lib/modules/6.1.0-test/initramfs.img"
  printf 'ID=testos\nNAME=testos\nPRETTY_NAME="Test OS"\nVERSION_ID=1\n' > "$t/usr/lib/os-release"
  ln -sf ../usr/lib/os-release "$t/usr/etc/os-release"
  OLD=$(ostree --repo="$s/ostree/repo" commit -b testos/stable --add-metadata-string=version=4.15.1 -s old --tree=dir="$t")
  ostree --repo="$s/ostree/repo" refs --create=keep/old "$OLD"
  ostree admin deploy --sysroot="$s" --os=testos testos/stable >/dev/null
  echo new > "$t/usr/bin/new"
  NEW=$(ostree --repo="$s/ostree/repo" commit -b testos/stable --add-metadata-string=version=4.16.0 -s new --tree=dir="$t")
  ostree admin deploy --sysroot="$s" --os=testos --retain testos/stable >/dev/null
}

# The node as rpm-ostree sees it: the real sysroot's boot order (written through libostree, as a
# rollback writes it) and, in the fake's state, the booted deployment and a staged one.
rpm_state() {
  local first=$1 second=$2 booted=$3 staged=${4:-}
  local keys=("testos:$first.0" "testos:$second.0") k
  while read -r k; do
    case " ${keys[*]} " in *" $k "*) ;; *) keys+=("$k") ;; esac
  done < <(ostree admin status --sysroot="$ROOT/sysroot" | awk '!/^    / {print $1 ":" $2}')
  "$PROJECT/tests/support/ostree-sysroot.py" write "$ROOT/sysroot" "${keys[@]}" \
    || fail "could not write the sysroot's boot order"
  mkdir -p "$ROOT/var/lib/fake-rpm-ostree"
  local st=null
  [ -n "$staged" ] && st="\"testos-$staged.0\""
  printf '{"osname":"testos","booted":"testos-%s.0","staged":%s,"boot_default":true,"faults":{"busy":false,"no_rollback":false,"hang":false,"crash_mid_txn":false,"finish_error":null,"txn_delay_ms":200}}\n' \
    "$booted" "$st" > "$ROOT/var/lib/fake-rpm-ostree/state.json.tmp"
  mv "$ROOT/var/lib/fake-rpm-ostree/state.json.tmp" "$ROOT/var/lib/fake-rpm-ostree/state.json"
}

# Commit a new version of the OS tree and deploy it (first, keeping the others) in stateroot
# $1; prints its checksum.
deploy_version() {
  local os=$1 version=$2 s=$ROOT/sysroot t=$WORK/ostree-tree c
  [ -d "$s/ostree/deploy/$os" ] || ostree admin os-init --sysroot="$s" "$os" >/dev/null
  echo "$version" > "$t/usr/bin/version"
  c=$(ostree --repo="$s/ostree/repo" commit -b "$os/stable" --add-metadata-string=version="$version" -s "$version" --tree=dir="$t")
  ostree --repo="$s/ostree/repo" refs --create="keep/$os-$version" "$c"
  ostree admin deploy --sysroot="$s" --os="$os" --retain "$c" >/dev/null
  echo "$c"
}

prepare_node() {
  say "Preparing a throwaway node in $ROOT"
  mkdir -p "$ROOT"
  tar -C "$ROOT" -xf "$(rootfs_tarball)"
  echo node1 > "$ROOT/etc/hostname"
  # etcd listens on localhost: a minbase root file system has no /etc/hosts to resolve it.
  printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1 node1\n' > "$ROOT/etc/hosts"
  echo 5e2f1d3c7a9b4e6f8a0b1c2d3e4f5a6b > "$ROOT/etc/machine-id"
  mkdir -p "$ROOT/var/log/journal"
  # Quieter, faster boots: no login prompts.
  systemctl --root="$ROOT" mask console-getty.service getty@.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true
  install_recoveryd
  install -D -m 0644 "$HERE/node/50-e2e.toml" "$ROOT/etc/recoveryd/config.d/50-e2e.toml"
  install -D -m 0755 "$BIN_DIR/examples/fake-rpm-ostreed" "$ROOT/usr/libexec/recoveryd-e2e/fake-rpm-ostreed"
  install -D -m 0755 "$PROJECT/tests/support/ostree-sysroot.py" "$ROOT/usr/libexec/recoveryd-e2e/ostree-sysroot.py"
  install -D -m 0644 "$PROJECT/tests/support/org.projectatomic.rpmostree1.conf" "$ROOT/etc/dbus-1/system.d/org.projectatomic.rpmostree1.conf"
  for u in kubelet.service crio.service rpm-ostreed.service; do
    install -D -m 0644 "$HERE/node/$u" "$ROOT/etc/systemd/system/$u"
  done
  install -D -m 0644 "$HERE/node/org.projectatomic.rpmostree1.service" \
    "$ROOT/usr/share/dbus-1/system-services/org.projectatomic.rpmostree1.service"
  systemctl --root="$ROOT" enable kubelet.service crio.service >/dev/null 2>&1
  mkdir -p "$ROOT/opt/fake-cluster/bin" "$ROOT/opt/fake-cluster/state"
  cp "$PROJECT"/tests/support/cluster-bin/* "$ROOT/opt/fake-cluster/bin/"
  # The cluster tools run in transient units with their own sandboxes (crictl and oc cannot
  # write outside their private /tmp); the fakes keep their call log and state in
  # /opt/fake-cluster, which a prefix drop-in for every tool unit opens, the way an operator
  # would widen a tool's sandbox.
  mkdir -p "$ROOT/etc/systemd/system/recoveryd-tool-.service.d"
  printf '[Service]\nReadWritePaths=/opt/fake-cluster\n' \
    > "$ROOT/etc/systemd/system/recoveryd-tool-.service.d/50-fake-cluster.conf"
  # A real etcd (Debian's etcd-server, its own unit): the stand-ins of cluster-backup.sh and
  # cluster-restore.sh snapshot and restore it, as the real scripts do on a single node.
  cat > "$ROOT/opt/fake-cluster/etcd.env" <<'ENV'
ETCDCTL_ENDPOINTS=http://127.0.0.1:2379
ETCD_UNIT=etcd.service
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_DATA_DIR_BACKUP=/var/lib/etcd-backup
ETCD_USER=etcd
ETCD_NAME=node1
ETCD_INITIAL_CLUSTER=node1=http://localhost:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://localhost:2380
ENV
  mkdir -p "$ROOT/var/lib/fake-selinuxfs"; echo 1 > "$ROOT/var/lib/fake-selinuxfs/enforce"
  build_sysroot
  rpm_state "$OLD" "$NEW" "$OLD"
  # What the backup holds: configuration, a secret, a tool, kubelet state, a machine-config file.
  mkdir -p "$ROOT/etc/e2e" "$ROOT/usr/local/bin" "$ROOT/var/lib/kubelet/pods/p1" "$ROOT/opt/mco" "$ROOT/etc/machine-config-daemon"
  echo "cluster-name: edge-042" > "$ROOT/etc/e2e/cluster.conf"
  echo "s3cr3t" > "$ROOT/etc/e2e/secret"; chmod 600 "$ROOT/etc/e2e/secret"
  printf '#!/bin/sh\necho tool 1\n' > "$ROOT/usr/local/bin/tool"; chmod 755 "$ROOT/usr/local/bin/tool"
  echo "kind: KubeletConfiguration" > "$ROOT/var/lib/kubelet/config.yaml"
  echo "pod state" > "$ROOT/var/lib/kubelet/pods/p1/data"
  echo "extra=1" > "$ROOT/opt/mco/extra.conf"
  echo '{"spec":{"config":{"storage":{"files":[{"path":"/opt/mco/extra.conf"},{"path":"/etc/e2e/cluster.conf"}]}}}}' \
    > "$ROOT/etc/machine-config-daemon/currentconfig"
}

# ---------------------------------------------------------------------------------------------
# Running the node

# Start the node and wait until systemd has finished booting. With --may-reboot, a node that
# reboots before that (a resumed recovery can get to its reboot within a second) is fine: the
# caller expects the reboot next.
boot() {
  local may_reboot=0
  if [ "${1:-}" = "--may-reboot" ]; then may_reboot=1; fi
  BOOT=$((BOOT + 1))
  say "Boot $BOOT"
  for cg in "${CGROUP_DIRS[@]}"; do mkdir -p "$cg"; done
  (
    for cg in "${CGROUP_DIRS[@]}"; do echo $BASHPID > "$cg/cgroup.procs"; done
    exec systemd-nspawn --quiet --boot --register=no --keep-unit --console=read-only \
      --resolv-conf=off --timezone=off -D "$ROOT"
  ) >>"$WORK/console.log" 2>&1 &
  NSPAWN_PID=$!
  # Four scenarios boot nodes at once on two cores: a boot has been seen to take over 60s.
  local deadline=$((SECONDS + BOOT_TIMEOUT)) state=
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$NSPAWN_PID" 2>/dev/null; then
      [ "$may_reboot" = 1 ] && { detail "the node went down again before its boot had finished"; return; }
      fail "the container exited during boot $BOOT"
    fi
    state=$(IN_NODE_TIMEOUT=10 in_node systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) break ;; esac
    sleep 0.2
  done
  case "$state" in running|degraded) ;; *) fail "boot $BOOT did not finish within ${BOOT_TIMEOUT}s (state: ${state:-unknown})" ;; esac
  detail "systemd is $state; boot id $(in_node cat /proc/sys/kernel/random/boot_id)"
}

# Run a command inside the node, for at most IN_NODE_TIMEOUT seconds (default 900). The bound
# is not only for a command that hangs: when the node shuts down while the command runs, its
# systemd-shutdown stops every process of the node with SIGSTOP before killing them, nsenter
# (outside the node) stops itself when its child does, as job control would have it, and
# never reaps the killed child; the node's PID namespace then never empties and the reboot
# never ends. Killing nsenter lets the child be reaped.
in_node() {
  local pid
  pid=$(pgrep -P "$NSPAWN_PID" | head -1)
  [ -n "$pid" ] || return 1
  timeout -s KILL "${IN_NODE_TIMEOUT:-900}" nsenter -t "$pid" -a "$@"
}

# Wait for the container to end; sets EXIT_CODE to nspawn's (133: reboot, 0: poweroff). Not in
# a subshell: only this shell can wait for its child.
wait_exit() {
  local timeout=$1 deadline=$((SECONDS + $1))
  while kill -0 "$NSPAWN_PID" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "the node did not reboot within ${timeout}s"
    sleep 0.2
  done
  EXIT_CODE=0
  wait "$NSPAWN_PID" || EXIT_CODE=$?
  NSPAWN_PID=
}

expect_reboot() {
  wait_exit "$1"
  [ "$EXIT_CODE" = 133 ] || fail "expected a reboot (nspawn exit 133), got $EXIT_CODE"
  detail "the node rebooted (nspawn exit 133)"
}

poweroff() {
  [ -n "$NSPAWN_PID" ] || return 0
  kill -TERM "$NSPAWN_PID"
  wait_exit 60
}

# The value at a JSON path in the node's status.
status_field() {
  in_node recoveryctl status --json 2>/dev/null | python3 -c "import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split('.'):
    v=(v or {}).get(k) if isinstance(v, dict) else None
print('' if v is None else v)" "$1"
}

wait_run_end() {
  local timeout=$1 deadline=$((SECONDS + $1)) state=
  while [ $SECONDS -lt $deadline ]; do
    state=$(IN_NODE_TIMEOUT=30 status_field last_recovery.state || true)
    case "$state" in succeeded|failed|timeout|cancelled) echo "$state"; return ;; esac
    kill -0 "$NSPAWN_PID" 2>/dev/null || fail "the node stopped while the recovery ran"
    sleep 1
  done
  fail "the recovery did not end within ${timeout}s (state: ${state:-unknown})"
}

unit_property() {
  in_node busctl --system get-property org.freedesktop.systemd1 \
    "/org/freedesktop/systemd1/unit/$(echo "$1" | sed 's/\./_2e/g; s/-/_2d/g')" org.freedesktop.systemd1.Unit "$2" \
    | sed 's/^s "\(.*\)"$/\1/'
}

# ---------------------------------------------------------------------------------------------
# The steps of the cycle

# etcdctl against the node's etcd.
etcdctl_in_node() {
  in_node env ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 "$@"
}

# Every key under /e2e/ and its value, one "key=value" a line, sorted.
etcd_keys() {
  etcdctl_in_node get --prefix /e2e/ -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
for k, v in sorted((base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode()) for kv in kvs):
    print(f"{k}={v}")'
}

ETCD_AT_BACKUP="/e2e/cluster=edge-042
/e2e/deleted-by-upgrade=must come back
/e2e/nodes/node1=Ready"

backup_like_the_job() {
  say "Writing keys into the node's etcd, then taking the backup the way the backup Job does: recoveryctl --socket ... backup --wait"
  etcdctl_in_node put /e2e/cluster edge-042 >/dev/null || fail "etcd is not answering"
  etcdctl_in_node put /e2e/deleted-by-upgrade "must come back" >/dev/null
  etcdctl_in_node put /e2e/nodes/node1 Ready >/dev/null
  [ "$(etcd_keys)" = "$ETCD_AT_BACKUP" ] || fail "etcd holds $(etcd_keys)"
  in_node recoveryctl --socket /run/recoveryd/recoveryd.sock backup --wait 2>&1 | sed 's/^/    /' >&2 \
    || fail "the backup failed"
  detail "$(in_node recoveryctl generations | head -1)"
  detail "ostree: $(in_node ostree admin status --sysroot=/sysroot | grep -c 'Pinned: yes') deployment pinned"
  mkdir -p "$WORK/reference"
  for t in etc usr/local var/lib/kubelet; do
    mkdir -p "$WORK/reference/$t"
    rsync -aAXH --numeric-ids "$ROOT/$t/" "$WORK/reference/$t/"
  done
  cp -a "$ROOT/opt/mco/extra.conf" "$WORK/reference/extra.conf"
}

break_the_node() {
  say "A failed upgrade: a new deployment boots, and /etc, /usr/local, /var/lib/kubelet and a machine-config file change"
  # Besides, another OS's deployment, pinned by someone else, and a further upgrade staged for
  # the next boot (finalized at shutdown): the recovery must boot neither.
  FOREIGN=$(deploy_version otheros 9.0)
  ostree admin pin --sysroot="$ROOT/sysroot" 0 >/dev/null
  STAGED=$(deploy_version testos 4.17.0)
  rpm_state "$STAGED" "$NEW" "$NEW" "$STAGED"
  echo "cluster-name: broken" > "$ROOT/etc/e2e/cluster.conf"
  rm "$ROOT/etc/e2e/secret"
  echo "added by the upgrade" > "$ROOT/etc/e2e/upgrade-leftover.conf"
  printf '#!/bin/sh\necho tool 2\n' > "$ROOT/usr/local/bin/tool"
  echo "new tool" > "$ROOT/usr/local/bin/new-tool"
  echo "kind: Broken" > "$ROOT/var/lib/kubelet/config.yaml"
  rm -r "$ROOT/var/lib/kubelet/pods/p1"
  echo "extra=2" > "$ROOT/opt/mco/extra.conf"
  etcdctl_in_node put /e2e/cluster broken >/dev/null
  etcdctl_in_node del /e2e/deleted-by-upgrade >/dev/null
  etcdctl_in_node put /e2e/added-by-upgrade leftover >/dev/null
  detail "etcd after the upgrade: $(etcd_keys | tr '\n' ' ')"
  detail "booted now: 4.16.0 (unpinned), 4.17.0 staged, a pinned otheros 9.0 beside them; the pinned 4.15.1 is the rollback deployment"
}

start_recovery() {
  say "recoveryctl recover --dry-run: what the recovery will do"
  in_node recoveryctl recover --dry-run 2>&1 | grep -v '^      ' | sed 's/^/    /' | head -40 >&2 || true
  say "recoveryctl recover: the daemon checks the backup and rolls back through rpm-ostree, then reboots"
  in_node recoveryctl recover 2>&1 | sed 's/^/    /' >&2 || true
}

check_trees() {
  local diffs=
  for t in etc usr/local var/lib/kubelet; do
    # The recovery disables kubelet before its reboot and enables it again at the end, so
    # systemd recreates kubelet's wants symlink after the restore (checked by check_units).
    diffs+=$(rsync -naAXHc --delete --numeric-ids --itemize-changes \
      --exclude=/kubernetes/manifests --exclude=/systemd/system/multi-user.target.wants/ \
      "$WORK/reference/$t/" "$ROOT/$t/") || fail "rsync could not compare $t"
  done
  cmp -s "$WORK/reference/extra.conf" "$ROOT/opt/mco/extra.conf" || diffs+=$'\nextra.conf differs'
  [ -z "$diffs" ] || fail "the trees differ from the backup:
$diffs"
  detail "/etc, /usr/local, /var/lib/kubelet and the machine-config file equal the backup (rsync -naAXHc: no difference)"
}

# The node runs the backup's deployment; the staged upgrade is gone; the foreign pin is kept.
check_deployments() {
  local booted
  booted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["booted"])' "$ROOT/var/lib/fake-rpm-ostree/state.json")
  [ "$booted" = "testos-$OLD.0" ] || fail "the node booted $booted, not the backup's testos-$OLD.0"
  ostree admin status --sysroot="$ROOT/sysroot" | grep -q "$STAGED" && fail "the staged upgrade $STAGED is still deployed"
  [ "$(cat "$ROOT/sysroot/ostree/deploy/otheros/deploy/$FOREIGN.0.origin" | grep -c 'pinned=true')" = 1 ] \
    || fail "the foreign pin on otheros $FOREIGN was removed"
  grep -q '"call":"Cleanup"' "$ROOT/var/lib/fake-rpm-ostree/calls.log" \
    || fail "rpm-ostree was never asked to clean up the staged deployment"
  detail "booted the backup's 4.15.1; the staged 4.17.0 was removed through rpm-ostree's Cleanup; the foreign pin is intact"
}

check_units() {
  local k c e
  k=$(unit_property kubelet.service ActiveState); c=$(unit_property crio.service ActiveState)
  e=$(unit_property kubelet.service UnitFileState)
  [ "$k" = active ] && [ "$c" = active ] && [ "$e" = enabled ] \
    || fail "kubelet $k ($e), crio $c: expected both active and kubelet enabled"
  detail "kubelet.service active and enabled, crio.service active (read over D-Bus)"
}

check_journal() {
  local run=$1
  in_node recoveryctl journal --run "$run" --json > "$WORK/journal.json" || fail "reading the journal"
  python3 - "$WORK/journal.json" "$2" <<'EOF' || fail "the journal is not as expected"
import json, sys
j = json.load(open(sys.argv[1]))
min_boots = int(sys.argv[2])
steps = j["steps"]
names = [s["name"] for s in steps]
plan = [p[1] for p in j["run"]["plan"]]
missing = [n for n in plan if n not in names]
assert not missing, f"steps never journaled: {missing}"
final = {}
for s in steps:
    final[s["name"]] = s["state"]
bad = {n: st for n, st in final.items() if st not in ("done", "skipped")}
assert not bad, f"steps not complete: {bad}"
boots = sorted({s["boot_id"] for s in steps})
assert len(boots) >= min_boots, f"steps ran in {len(boots)} boots, expected at least {min_boots}"
assert j["run"]["state"] == "succeeded", j["run"]
print(f"    journal: {len(plan)} steps, all done or skipped, in {len(boots)} boots", file=sys.stderr)
EOF
  in_node journalctl -u recoveryd -o json --no-pager > "$WORK/journald.json"
  python3 - "$WORK/journald.json" <<'EOF' || fail "journald lacks recoveryd's structured fields"
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fields = {k for e in entries for k in e}
for f in ("RECOVERY_RUN", "RECOVERY_STAGE", "RECOVERY_STEP", "MESSAGE_ID"):
    assert f in fields, f"no {f} field"
ids = {e.get("MESSAGE_ID") for e in entries}
for mid, what in (("5d56101d25df43e0b1e634fc5fac8b7d", "run started"), ("b31a37685337456eb532290d044ef3f1", "run succeeded")):
    assert mid in ids, f"no {what} MESSAGE_ID"
print(f"    journald: {len(entries)} recoveryd entries with RECOVERY_RUN/STAGE/STEP and the run MESSAGE_IDs", file=sys.stderr)
EOF
}

# etcd, running, holds exactly the keys and values of backup time, restored from the snapshot.
check_etcd() {
  [ "$(in_node systemctl is-active etcd.service)" = active ] || fail "etcd is not running after the recovery"
  local now
  now=$(etcd_keys)
  [ "$now" = "$ETCD_AT_BACKUP" ] || fail "etcd after the recovery holds:
$now
expected:
$ETCD_AT_BACKUP"
  in_node recoveryctl journal --run 2 --json > "$WORK/journal-etcd.json"
  grep -q 'restoring old etcd pod to start etcd again' "$WORK/journal-etcd.json" \
    || fail "the journal does not show cluster-restore.sh restoring the snapshot"
  detail "etcd (a real etcd $(in_node etcd --version | head -1 | awk '{print $3}')): exactly the backup's keys and values: $(echo "$now" | tr '\n' ' ')"
}

check_calls() {
  python3 - "$ROOT/opt/fake-cluster/calls.log" <<'EOF' || fail "the cluster tools were not called in order"
import sys
calls = [l.split() for l in open(sys.argv[1]) if l.strip()]
want = ["cluster-backup.sh", "crictl rmp", "crio wipe", "crictl ps", "cluster-restore.sh", "oc patch"]
it = iter(calls)
for w in want:
    prog, *arg = w.split()
    for c in it:
        if c[0] == prog and (not arg or arg[0] in c):
            break
    else:
        raise SystemExit(f"{w} not called in order: {calls}")
print("    cluster tools called in order: " + " -> ".join(want), file=sys.stderr)
EOF
  grep -q '"call":"Rollback"' "$ROOT/var/lib/fake-rpm-ostree/calls.log" || grep -q '"call": "Rollback"' "$ROOT/var/lib/fake-rpm-ostree/calls.log" \
    || fail "rpm-ostree was never asked to roll back"
  detail "rpm-ostree: a Rollback transaction ran"
}

check_selinux() {
  [ "$(cat "$ROOT/var/lib/fake-selinuxfs/enforce")" = 1 ] || fail "SELinux was left permissive"
  in_node journalctl -u recoveryd --no-pager > "$WORK/recoveryd.log"
  grep -q "SELinux set back to enforcing" "$WORK/recoveryd.log" \
    || fail "the restore never switched SELinux (permissive = true in this test)"
  detail "SELinux was permissive during the restores and is enforcing again"
}

# Every cluster tool call ran in a transient unit of its own, named after tool, run and step:
# systemd's own journal entries about each unit (UNIT=) name them.
check_tool_units() {
  local units calls
  units=$(in_node journalctl --no-pager -F UNIT | grep '^recoveryd-tool-' | sort -u || true)
  for want in cluster-run1-cluster-backup crictl-run2-remove-pods crio-run2-wipe-crio \
      cluster-run2-cluster-restore oc-run2-redeploy-operators crictl-run2-wait-containers; do
    grep -q "^recoveryd-tool-$want-p[0-9]*n[0-9]*\.service$" <<<"$units" \
      || fail "no transient unit recoveryd-tool-$want-* in the node's journal; units: $(echo $units)"
  done
  calls=$(grep -cE '^(crictl|crio|oc|cluster-backup\.sh|cluster-restore\.sh) ' "$ROOT/opt/fake-cluster/calls.log")
  [ "$(grep -vc '^recoveryd-tool-ostree-' <<<"$units")" -ge "$calls" ] \
    || fail "$calls cluster tool calls but only these units: $(echo $units)"
  detail "$calls cluster tool calls, each in its own transient unit, e.g. $(grep -m1 wipe-crio <<<"$units")"
  local t
  t=$(in_node systemctl show -p ProtectSystem,PrivateNetwork,CapabilityBoundingSet recoveryd.service | tr '\n' ' ')
  case "$t" in *ProtectSystem=strict*) ;; *) fail "recoveryd.service is not hardened: $t" ;; esac
  case "$t" in *PrivateNetwork=yes*) ;; *) fail "recoveryd.service is not hardened: $t" ;; esac
}

# A tool that never answers: its unit reaches RuntimeMaxSec=, systemd kills the whole unit
# (the child it left too), and the step fails saying so.
check_tool_timeout() {
  mkdir -p "$ROOT/etc/recoveryd/config.d"
  printf '[host]\ncommand_timeout = "3s"\n' > "$ROOT/etc/recoveryd/config.d/60-timeout.toml"
  touch "$ROOT/opt/fake-cluster/state/hang-ps"
  # A containers-storage, so that the backup's first step asks crictl which images are in use.
  local fresh_storage=0
  if [ ! -e "$ROOT/var/lib/containers/storage/vfs-images/images.json" ]; then
    mkdir -p "$ROOT/var/lib/containers/storage/vfs-images"
    echo '[]' > "$ROOT/var/lib/containers/storage/vfs-images/images.json"
    fresh_storage=1
  fi
  in_node systemctl restart recoveryd.service
  local out rc=0
  out=$(in_node recoveryctl backup --wait 2>&1) || rc=$?
  rm -f "$ROOT/opt/fake-cluster/state/hang-ps" "$ROOT/etc/recoveryd/config.d/60-timeout.toml"
  [ "$fresh_storage" = 0 ] || rm -rf "$ROOT/var/lib/containers/storage"
  [ "$rc" != 0 ] || fail "a backup whose crictl hangs succeeded: $out"
  case "$out" in *"no result after 3s"*recoveryd-tool-crictl-run*-select-images-*) ;;
    *) fail "the step did not report the tool's timeout and unit: $out" ;; esac
  local pid unit result
  pid=$(cat "$ROOT/opt/fake-cluster/state/hang-ps.pid")
  if in_node test -d "/proc/$pid"; then fail "the hung tool's child $pid still runs"; fi
  unit=$(in_node journalctl --no-pager -F UNIT | grep -m1 '^recoveryd-tool-crictl-run[0-9]*-select-images-' || true)
  result=$(in_node journalctl --no-pager UNIT="$unit" -o cat | grep -c "timeout" || true)
  [ "$result" -ge 1 ] || fail "systemd did not record a timeout of $unit"
  detail "crictl hung: $unit hit RuntimeMaxSec=3s, its child is gone; $(grep -o 'step select-images[^;]*' <<<"$out" | head -1)"
  in_node systemctl restart recoveryd.service
}

install_failpoint() {
  local fp=$1
  for u in recoveryd.service recoveryd-resume.service recoveryd-resume-offline.service; do
    mkdir -p "$ROOT/etc/systemd/system/$u.d"
    printf '[Service]\nEnvironment=RECOVERYD_FAILPOINTS=%s\n' "$fp" > "$ROOT/etc/systemd/system/$u.d/50-failpoint.conf"
  done
  printf 'Restart=no\n' >> "$ROOT/etc/systemd/system/recoveryd.service.d/50-failpoint.conf"
}

remove_failpoint() {
  rm -rf "$ROOT/etc/systemd/system/recoveryd.service.d" "$ROOT/etc/systemd/system/recoveryd-resume.service.d" \
    "$ROOT/etc/systemd/system/recoveryd-resume-offline.service.d"
}

# Wait until the recoveryd unit has failed (the failpoint killed it).
wait_killed() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt $deadline ]; do
    [ "$(unit_property recoveryd.service ActiveState 2>/dev/null)" = failed ] && return
    sleep 0.5
  done
  fail "recoveryd was not killed by the failpoint within $1s"
}

# ---------------------------------------------------------------------------------------------

binaries
prepare_node
boot
backup_like_the_job
break_the_node
start_recovery
expect_reboot 120

case "$SCENARIO" in
cycle)
  boot --may-reboot
  say "Nobody logs in: recoveryd-resume.service continues the recovery (restore files, then reboot)"
  expect_reboot 180
  boot
  say "Boot 3: the resume unit restores /var/lib/kubelet, runs cluster-restore.sh, brings kubelet and CRI-O back"
  state=$(wait_run_end 240)
  [ "$state" = succeeded ] || fail "the recovery ended $state: $(status_field last_recovery.error)"
  say "The recovery succeeded; checking the node"
  check_trees
  check_units
  check_deployments
  check_journal 2 3
  check_calls
  check_etcd
  check_selinux
  check_tool_units
  say "A cluster tool that hangs is stopped with its whole unit, and the step says so"
  check_tool_timeout
  ;;
kill-mid-restore)
  install_failpoint "restore-etc:during@3"
  boot
  say "The daemon is SIGKILLed in the middle of restoring /etc (failpoint restore-etc:during@3)"
  wait_killed 120
  detail "$(in_node recoveryctl journal --run 2 | grep restore-etc | head -1 | tr -s ' ')"
  remove_failpoint
  in_node systemctl daemon-reload
  say "The node reboots"
  in_node systemctl reboot || true
  expect_reboot 60
  boot --may-reboot
  say "The resume unit runs the interrupted step again and goes on to the next reboot"
  expect_reboot 180
  boot
  state=$(wait_run_end 240)
  [ "$state" = succeeded ] || fail "the recovery ended $state: $(status_field last_recovery.error)"
  check_trees
  check_units
  in_node recoveryctl journal --run 2 --json | python3 -c "import json,sys
steps=[s for s in json.load(sys.stdin)['steps'] if s['name']=='restore-etc']
assert [s['state'] for s in steps][0]=='interrupted', steps
assert steps[-1]['state']=='done', steps
print('    restore-etc: attempt 1 interrupted, attempt %d done' % steps[-1]['attempt'], file=sys.stderr)" \
    || fail "restore-etc's interrupted attempt is not on record"
  ;;
breaker)
  boot --may-reboot
  say "Restoring files, then the reboot"
  expect_reboot 180
  install_failpoint "restore-kubelet:before"
  # Boot after boot the resume dies at the same step. The breaker counts boots without
  # progress (the first of these boots completes the reboot barrier, which is progress) and
  # stops the run in the third: there, D-Bus activation starts the killed daemon again, and its
  # automatic resume finds the count reached.
  stopped=
  for attempt in 1 2 3 4 5 6; do
    boot
    deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
      [ "$(status_field last_recovery.state 2>/dev/null)" = failed ] && { stopped=$BOOT; break; }
      [ "$(unit_property recoveryd.service ActiveState 2>/dev/null)" = failed ] && break
      sleep 0.5
    done
    [ -n "$stopped" ] && break
    [ $SECONDS -lt $deadline ] || fail "boot $BOOT: neither a kill by the failpoint nor the breaker within 60s"
    detail "the resume died before restore-kubelet (failpoint); rebooting"
    in_node systemctl reboot || true
    expect_reboot 60
  done
  [ -n "$stopped" ] || fail "the breaker never stopped the run"
  [ "$stopped" = 6 ] || fail "the breaker stopped the run in boot $stopped, not in the third boot without progress (6)"
  say "Boot $BOOT was the third without progress: the breaker stopped the run; the boot goes on"
  err=$(status_field last_recovery.error)
  case "$err" in *"boot-loop breaker"*"recoveryctl resume"*) ;; *) fail "unclear breaker message: $err" ;; esac
  detail "$err"
  sys=$(in_node systemctl is-system-running || true)
  case "$sys" in running|degraded) ;; *) fail "the boot is blocked: systemd is $sys" ;; esac
  deadline=$((SECONDS + 30))
  while [ "$(unit_property recoveryd-resume.service ActiveState)" = activating ]; do
    [ $SECONDS -lt $deadline ] || fail "recoveryd-resume.service is still starting: the boot is blocked"
    sleep 0.5
  done
  detail "systemd is $sys; recoveryd-resume.service is $(unit_property recoveryd-resume.service ActiveState)"
  ;;
no-daemon)
  # After its first reboot the daemon cannot start (a broken binary here; a failing D-Bus would
  # do the same; a mask in /etc would be undone by the restore of /etc): recoveryd-resume.service
  # fails, and its OnFailure= unit resumes the recovery without the daemon, outside the boot
  # ordering that makes kubelet wait for the resume unit.
  printf '#!/bin/sh\necho "recoveryd: broken for this test" >&2\nexit 1\n' > "$ROOT/usr/bin/recoveryd"
  boot --may-reboot
  say "recoveryd does not start: recoveryd-resume-offline.service continues the recovery (restore files, then reboot)"
  expect_reboot 180
  boot
  state=$(wait_run_end 240)
  [ "$state" = succeeded ] || fail "the recovery ended $state: $(status_field last_recovery.error)"
  local_result=$(in_node systemctl show -p Result,ActiveState recoveryd-resume.service | tr '\n' ' ')
  case "$local_result" in *Result=exit-code*) ;; *) fail "recoveryd-resume.service did not fail: $local_result
$(in_node journalctl -b -u recoveryd-resume.service -u recoveryd-resume-offline.service --no-pager | tail -30)" ;; esac
  local_result=$(in_node systemctl show -p Result,ExecMainStatus recoveryd-resume-offline.service | tr '\n' ' ')
  case "$local_result" in *Result=success*ExecMainStatus=0*) ;; *) fail "recoveryd-resume-offline.service did not succeed: $local_result" ;; esac
  detail "recoveryd-resume.service failed (no daemon); recoveryd-resume-offline.service finished the recovery"
  check_trees
  check_units
  ;;
*)
  fail "unknown scenario $SCENARIO"
  ;;
esac

poweroff
say "PASS: $SCENARIO"
