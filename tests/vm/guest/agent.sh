#!/bin/bash
# The harness's agent in the guest (tests/vm/harness.sh puts it on the job disk; the image's
# vm-job.service runs it at every boot). It runs the actions in /run/vm-job/actions, one a line,
# prints its markers on the serial console (lines starting "VMTEST "), and writes what it
# found to the results disk (a tar on the disk with serial harness-out).
#
# Markers: BOOT <n> <boot id> <enforcing> <uptime>, STEP <text>, CUT-NOW <label> (the harness
# kills qemu at once), CUT-AFTER <seconds> <label> (the harness kills qemu that long after),
# WAITING (a reboot by recoveryd is expected), PASS, FAIL <why>, POWEROFF.
set -uo pipefail
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
JOB=/run/vm-job
PAYLOAD=$JOB/payload
STATE=/var/lib/vm-test
OUT=/run/vm-out
mkdir -p "$STATE" "$OUT"

mark() { echo "VMTEST $*"; }
step() { mark "STEP $*"; }
# A line for the harness's report, tagged with the boot it was written in.
report() { printf 'B%s\t%s\n' "${boots:-0}" "$*" >> "$STATE/report.txt"; sync "$STATE/report.txt"; }

# Everything the harness may want to read after this boot.
publish() {
  journalctl -b --no-pager -o short-monotonic > "$OUT/journal-boot.txt" 2>&1 || true
  journalctl --no-pager -o short-monotonic -u 'recoveryd*' > "$OUT/journal-recoveryd.txt" 2>&1 || true
  cp /var/log/audit/audit.log "$OUT/audit.log" 2>/dev/null || true
  cp "$STATE/report.txt" "$OUT/report.txt" 2>/dev/null || true
  recoveryctl journal --json > "$OUT/runs.json" 2>/dev/null || true
  tar -cf /dev/disk/by-id/virtio-harness-out -C "$OUT" . 2>/dev/null
  sync
}

finish() {
  publish
  mark POWEROFF
  systemctl poweroff --no-block
  sleep infinity
}

fail() {
  mark "FAIL $*"
  printf 'FAIL %s\n' "$*" > "$OUT/result"
  finish
}

pass() {
  mark PASS
  echo PASS > "$OUT/result"
  finish
}

# ---------------------------------------------------------------------------------------------
# Reading the node

run_field() {
  recoveryctl status --json 2>/dev/null | python3 -c "import json,sys
v=json.load(sys.stdin)
for k in sys.argv[1].split('.'):
    v=(v or {}).get(k) if isinstance(v, dict) else None
print('' if v is None else v)" "$1"
}

# Wait until the last recovery has ended; prints its state.
wait_recovery_end() {
  local deadline=$((SECONDS + $1)) s=
  while [ $SECONDS -lt $deadline ]; do
    s=$(run_field last_recovery.state)
    case "$s" in succeeded|failed|timeout|cancelled) echo "$s"; return 0 ;; esac
    sleep 2
  done
  echo "${s:-unknown}"
}

# A recoveryd or recoveryctl process stopped by a failpoint (state T), if any.
stopped_at_failpoint() {
  ps -eo pid=,stat=,comm= | awk '$2 ~ /^T/ && ($3 == "recoveryd" || $3 == "recoveryctl") {print $1; exit}'
}

# Our domains' denials, and all others (reported, not ours: stock Debian has a few per boot).
# Ours: recoveryd_t denied something, or anything denied access to a recoveryd_t process or a
# recoveryd_* file.
avc_ours() { grep -h 'avc:  denied' /var/log/audit/audit.log 2>/dev/null | grep -E '[st]context=[^ ]*:recoveryd[a-z_]*_t' || true; }
avc_all() { grep -h 'avc:  denied' /var/log/audit/audit.log 2>/dev/null || true; }

check_no_avc() {
  local ours n
  ours=$(avc_ours)
  n=$(avc_all | wc -l)
  avc_all > "$OUT/avc-all.txt"
  if [ -n "$ours" ]; then
    printf '%s\n' "$ours" > "$OUT/avc-ours.txt"
    fail "$(echo "$ours" | wc -l) AVC denials for recoveryd's domains, e.g. $(echo "$ours" | head -1)"
  fi
  report "avc: 0 denials for or against recoveryd's types in the audit log since the install; $n denials of other domains (avc-all.txt)"
}

# ---------------------------------------------------------------------------------------------
# Installing recoveryd the way a node does: rpm -i, scriptlets included

install_recoveryd() {
  [ "$(getenforce)" = Enforcing ] || fail "SELinux is $(getenforce) before the install"
  # The image's policy has the base OS's install_t, as on RHCOS (tests/vm/image.sh).
  semodule -l | grep -qx vmtest_anaconda || fail "the image's policy has no vmtest_anaconda module (install_t)"
  step "rpm -i: the base's provides, then recoveryd and recoveryd-selinux"
  # Debian's packages are not in the rpm database: one package provides what recoveryd's
  # requirements name (/bin/sh, dbus-common, selinux-policy-targeted, rtld(GNU_HASH)).
  rpm -i "$PAYLOAD"/rpm/vm-node-base-*.rpm > "$OUT/rpm-base.txt" 2>&1 || fail "rpm -i of the base: $(cat "$OUT/rpm-base.txt")"
  # The daemon alone is refused: with the targeted policy installed, recoveryd requires its
  # SELinux module (a rich dependency).
  if rpm -i "$PAYLOAD"/rpm/recoveryd-0*.x86_64.rpm > "$OUT/rpm-alone.txt" 2>&1; then
    fail "rpm installed recoveryd without recoveryd-selinux although the targeted policy is present"
  fi
  grep -q 'recoveryd-selinux' "$OUT/rpm-alone.txt" || fail "rpm refused recoveryd alone for another reason: $(cat "$OUT/rpm-alone.txt")"
  local t0=$SECONDS
  rpm -i "$PAYLOAD"/rpm/recoveryd-0*.x86_64.rpm "$PAYLOAD"/rpm/recoveryd-selinux-*.noarch.rpm \
    > "$OUT/rpm-install.txt" 2>&1 || fail "rpm -i recoveryd: $(cat "$OUT/rpm-install.txt")"
  report "install: rpm -i recoveryd recoveryd-selinux took $((SECONDS - t0)) s (scriptlets: preset, tmpfiles, semodule, load_policy, restorecon)"
  local u
  for u in recoveryd.socket recoveryd.service recoveryd-resume.service; do
    [ "$(systemctl is-enabled "$u" 2>&1)" = enabled ] || fail "$u is $(systemctl is-enabled "$u" 2>&1) after rpm -i (the preset enables it)"
  done
  semodule -l | grep -qx 'recoveryd' || semodule -l | grep -q '^recoveryd\b' || fail "semodule -l does not list recoveryd"
  [ "$(getsebool recoveryd_container_connect 2>&1)" = "recoveryd_container_connect --> on" ] \
    || fail "the boolean recoveryd_container_connect: $(getsebool recoveryd_container_connect 2>&1)"
  ls -Z /usr/bin/recoveryd | grep -q recoveryd_exec_t || fail "/usr/bin/recoveryd is $(ls -Z /usr/bin/recoveryd)"
  ls -dZ /var/recovery | grep -q recoveryd_var_t || fail "/var/recovery is $(ls -dZ /var/recovery) (the partition was not relabelled)"
  ls -dZ /etc/recoveryd | grep -q recoveryd_conf_t || fail "/etc/recoveryd is $(ls -dZ /etc/recoveryd)"
  [ -d /run/recoveryd ] || fail "tmpfiles did not create /run/recoveryd"
  report "install: units enabled by the preset, module recoveryd listed by semodule -l, boolean recoveryd_container_connect on, files labelled (recoveryd_exec_t, recoveryd_var_t on the XFS partition, recoveryd_conf_t)"
}

# After the whole cycle: the package goes, and nothing of it stays running or loaded.
remove_recoveryd() {
  step "rpm -e recoveryd recoveryd-selinux"
  rpm -e recoveryd recoveryd-selinux > "$OUT/rpm-erase.txt" 2>&1 || fail "rpm -e: $(cat "$OUT/rpm-erase.txt")"
  local u
  for u in recoveryd.socket recoveryd.service recoveryd-resume.service; do
    case "$(systemctl is-active "$u" 2>&1)" in active|activating) fail "$u still runs after rpm -e" ;; esac
    [ -e "/usr/lib/systemd/system/$u" ] && fail "$u is still installed after rpm -e"
    [ -e "/etc/systemd/system/multi-user.target.wants/$u" ] || [ -e "/etc/systemd/system/sockets.target.wants/$u" ] \
      && fail "$u is still enabled after rpm -e"
  done
  pgrep -x recoveryd >/dev/null && fail "a recoveryd process runs after rpm -e"
  semodule -l | grep -q '^recoveryd' && fail "the recoveryd module is still loaded after rpm -e"
  getsebool recoveryd_container_connect >/dev/null 2>&1 && fail "the boolean recoveryd_container_connect is still defined"
  report "rpm -e: no unit of ours running, installed or enabled; no recoveryd process; module and boolean gone"
}

# ---------------------------------------------------------------------------------------------
# The node: the fakes for what cannot run here, a real ostree sysroot, a real etcd, and the
# files the backup holds (as on the nspawn node, tests/e2e/harness.sh)

# The fakes stand for programs that run unconfined on RHCOS (unconfined_service_t there);
# Debian's reference policy has no such type, so they get initrc_exec_t: started by systemd,
# they run in initrc_t, which is unconfined.
unconfined_exec() { chcon -t initrc_exec_t "$@" || fail "chcon $*"; }
# rpm-ostreed and ostree run in install_t on RHCOS (vmtest_anaconda.te gives the guest one).
install_exec() { chcon -t install_exec_t "$@" || fail "chcon $*"; }

prepare_node() {
  step "preparing the node: fake rpm-ostreed over a real ostree sysroot, fake kubelet, CRI-O and cluster tools, a real etcd"
  local n=$PAYLOAD/node
  install -D -m 0644 "$n/50-vm.toml" /etc/recoveryd/config.d/50-vm.toml
  install -D -m 0755 "$PAYLOAD/fake-rpm-ostreed" /usr/libexec/recoveryd-e2e/fake-rpm-ostreed
  install -D -m 0755 "$PAYLOAD/ostree-sysroot.py" /usr/libexec/recoveryd-e2e/ostree-sysroot.py
  install_exec /usr/libexec/recoveryd-e2e/fake-rpm-ostreed /usr/bin/ostree
  install -D -m 0644 "$n/org.projectatomic.rpmostree1.conf" /etc/dbus-1/system.d/org.projectatomic.rpmostree1.conf
  local u
  for u in kubelet.service crio.service rpm-ostreed.service; do install -D -m 0644 "$n/$u" "/etc/systemd/system/$u"; done
  install -D -m 0644 "$n/org.projectatomic.rpmostree1.service" /usr/share/dbus-1/system-services/org.projectatomic.rpmostree1.service
  mkdir -p /opt/fake-cluster/bin /opt/fake-cluster/state
  cp "$PAYLOAD"/cluster-bin/* /opt/fake-cluster/bin/
  unconfined_exec /opt/fake-cluster/bin/*
  mkdir -p /etc/systemd/system/recoveryd-tool-.service.d
  printf '[Service]\nReadWritePaths=/opt/fake-cluster\n' > /etc/systemd/system/recoveryd-tool-.service.d/50-fake-cluster.conf
  cat > /opt/fake-cluster/etcd.env <<'ENV'
ETCDCTL_ENDPOINTS=http://127.0.0.1:2379
ETCD_UNIT=etcd.service
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_DATA_DIR_BACKUP=/var/lib/etcd-backup
ETCD_USER=etcd
ETCD_NAME=vm-node
ETCD_INITIAL_CLUSTER=vm-node=http://localhost:2380
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://localhost:2380
ENV
  systemctl daemon-reload
  systemctl enable --now kubelet.service crio.service >/dev/null 2>&1 || fail "starting the fake kubelet and CRI-O"
  build_sysroot
  rpm_state "$(cat "$STATE/old")" "$(cat "$STATE/new")" "$(cat "$STATE/old")"
  mkdir -p /etc/e2e /usr/local/bin /var/lib/kubelet/pods/p1 /opt/mco /etc/machine-config-daemon
  echo "cluster-name: edge-042" > /etc/e2e/cluster.conf
  echo "s3cr3t" > /etc/e2e/secret; chmod 600 /etc/e2e/secret
  printf '#!/bin/sh\necho tool 1\n' > /usr/local/bin/tool; chmod 755 /usr/local/bin/tool
  echo "kind: KubeletConfiguration" > /var/lib/kubelet/config.yaml
  echo "pod state" > /var/lib/kubelet/pods/p1/data
  echo "extra=1" > /opt/mco/extra.conf
  echo '{"spec":{"config":{"storage":{"files":[{"path":"/opt/mco/extra.conf"},{"path":"/etc/e2e/cluster.conf"}]}}}}' \
    > /etc/machine-config-daemon/currentconfig
  # A label of its own on one file: the restore must bring labels back too.
  chcon -t etc_runtime_t /etc/e2e/cluster.conf || fail "chcon of /etc/e2e/cluster.conf"
  systemctl is-active --quiet etcd.service || systemctl start etcd.service || fail "etcd does not start"
  systemctl start recoveryd.socket || fail "recoveryd.socket does not start"
  recoveryctl status > "$OUT/status-first.txt" 2>&1 || fail "recoveryctl status: $(cat "$OUT/status-first.txt")"
  ps -eZ | grep -E ' recoveryd$' | grep -q recoveryd_t || fail "the daemon does not run in recoveryd_t: $(ps -eZ | grep recoveryd)"
  report "node: recoveryd answers; the daemon runs in $(ps -eZ | awk '/ recoveryd$/ {print $1; exit}')"
  sync
}

build_sysroot() {
  local s=/sysroot t=$STATE/ostree-tree
  mkdir -p "$s" "$t/usr/bin" "$t/usr/lib/modules/6.1.0-test" "$t/usr/etc"
  ostree admin init-fs "$s" >/dev/null || fail "ostree admin init-fs"
  ostree admin os-init --sysroot="$s" testos >/dev/null
  echo k > "$t/usr/lib/modules/6.1.0-test/vmlinuz"; echo i > "$t/usr/lib/modules/6.1.0-test/initramfs.img"
  printf 'ID=testos\nNAME=testos\nPRETTY_NAME="Test OS"\nVERSION_ID=1\n' > "$t/usr/lib/os-release"
  ln -sf ../usr/lib/os-release "$t/usr/etc/os-release"
  ostree --repo="$s/ostree/repo" commit -b testos/stable --add-metadata-string=version=4.15.1 -s old --tree=dir="$t" > "$STATE/old"
  ostree --repo="$s/ostree/repo" refs --create=keep/old "$(cat "$STATE/old")"
  ostree admin deploy --sysroot="$s" --os=testos testos/stable >/dev/null || fail "ostree admin deploy"
  echo new > "$t/usr/bin/new"
  ostree --repo="$s/ostree/repo" commit -b testos/stable --add-metadata-string=version=4.16.0 -s new --tree=dir="$t" > "$STATE/new"
  ostree admin deploy --sysroot="$s" --os=testos --retain testos/stable >/dev/null || fail "ostree admin deploy (new)"
}

rpm_state() {
  local first=$1 second=$2 booted=$3 staged=${4:-}
  local keys=("testos:$first.0" "testos:$second.0") k
  while read -r k; do
    case " ${keys[*]} " in *" $k "*) ;; *) keys+=("$k") ;; esac
  done < <(ostree admin status --sysroot=/sysroot | awk '!/^    / {print $1 ":" $2}')
  /usr/libexec/recoveryd-e2e/ostree-sysroot.py write /sysroot "${keys[@]}" || fail "writing the sysroot's boot order"
  mkdir -p /var/lib/fake-rpm-ostree
  local st=null
  [ -n "$staged" ] && st="\"testos-$staged.0\""
  printf '{"osname":"testos","booted":"testos-%s.0","staged":%s,"boot_default":true,"faults":{"busy":false,"no_rollback":false,"hang":false,"crash_mid_txn":false,"finish_error":null,"txn_delay_ms":200}}\n' \
    "$booted" "$st" > /var/lib/fake-rpm-ostree/state.json.tmp
  mv /var/lib/fake-rpm-ostree/state.json.tmp /var/lib/fake-rpm-ostree/state.json
  sync
}

deploy_version() {
  local os=$1 version=$2 s=/sysroot t=$STATE/ostree-tree c
  [ -d "$s/ostree/deploy/$os" ] || ostree admin os-init --sysroot="$s" "$os" >/dev/null
  echo "$version" > "$t/usr/bin/version"
  c=$(ostree --repo="$s/ostree/repo" commit -b "$os/stable" --add-metadata-string=version="$version" -s "$version" --tree=dir="$t")
  ostree --repo="$s/ostree/repo" refs --create="keep/$os-$version" "$c"
  ostree admin deploy --sysroot="$s" --os="$os" --retain "$c" >/dev/null
  echo "$c"
}

etcd_keys() {
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 get --prefix /e2e/ -w json | python3 -c '
import base64, json, sys
kvs = json.load(sys.stdin).get("kvs", [])
for k, v in sorted((base64.b64decode(kv["key"]).decode(), base64.b64decode(kv["value"]).decode()) for kv in kvs):
    print(f"{k}={v}")'
}
etcdput() { ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 put "$@" >/dev/null; }

TREES="etc usr/local var/lib/kubelet"

# The harness's rsync, unconfined: /usr/bin/rsync is rsync_exec_t, and the reference policy
# runs it in rsync_t, which may not read /etc/shadow. A copy elsewhere (not in a backed-up
# tree) runs in the agent's domain: in /usr/libexec (bin_t), or where /usr is read-only (an
# ostree node) in /run, which dracut mounts without noexec (initramfs-tools mounts it noexec).
vm_rsync() {
  local r=/usr/libexec/vm-test/rsync
  if [ ! -x "$r" ] && ! install -D -m 0755 /usr/bin/rsync "$r" 2>/dev/null; then
    r=/run/vm-test/rsync
    [ -x "$r" ] || install -D -m 0755 /usr/bin/rsync "$r"
  fi
  "$r" "$@"
}

# A backup through the socket, as the backup Job takes it; then the reference copy of what it
# holds (labels included), for the comparisons after a recovery.
backup_and_reference() {
  step "backup (recoveryctl --socket ... backup --wait)"
  local t0=$SECONDS
  recoveryctl --socket /run/recoveryd/recoveryd.sock backup --wait > "$OUT/backup.txt" 2>&1 \
    || fail "the backup failed: $(tail -5 "$OUT/backup.txt")"
  report "backup: generation $(recoveryctl generations 2>/dev/null | awk 'NR==2 {print $1}') in $((SECONDS - t0)) s"
  save_reference
}

save_reference() {
  local t
  rm -rf "$STATE/reference.new"
  for t in $TREES; do
    mkdir -p "$STATE/reference.new/$t"
    vm_rsync -aAXH --numeric-ids "/$t/" "$STATE/reference.new/$t/" || fail "copying /$t for the reference"
  done
  cp -a /opt/mco/extra.conf "$STATE/reference.new/extra.conf"
  sync -f "$STATE"
  rm -rf "$STATE/reference"
  mv "$STATE/reference.new" "$STATE/reference"
  sync -f "$STATE"
}

break_the_node() {
  step "a failed upgrade: new deployment booted, /etc, /usr/local, /var/lib/kubelet, a machine-config file and etcd changed"
  local staged
  # Another OS's deployment, pinned by someone else: the recovery must leave it and its pin.
  deploy_version otheros 9.0 > "$STATE/foreign"
  ostree admin pin --sysroot=/sysroot 0 >/dev/null
  staged=$(deploy_version testos 4.17.0)
  echo "$staged" > "$STATE/staged"
  rpm_state "$staged" "$(cat "$STATE/new")" "$(cat "$STATE/new")" "$staged"
  echo "cluster-name: broken" > /etc/e2e/cluster.conf
  rm -f /etc/e2e/secret
  echo "added by the upgrade" > /etc/e2e/upgrade-leftover.conf
  printf '#!/bin/sh\necho tool 2\n' > /usr/local/bin/tool
  echo "new tool" > /usr/local/bin/new-tool
  echo "kind: Broken" > /var/lib/kubelet/config.yaml
  rm -rf /var/lib/kubelet/pods/p1
  echo "extra=2" > /opt/mco/extra.conf
  wait_etcd
  etcdput /e2e/cluster broken
  sync
}

# etcd starts at boot in parallel with the agent; under emulation it may take a minute.
wait_etcd() {
  local deadline=$((SECONDS + 180))
  until ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 endpoint health >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "etcd is not answering after 180 s"
    sleep 1
  done
}

etcd_at_backup() {
  wait_etcd
  etcdput /e2e/cluster edge-042 || fail "etcd is not answering"
  etcdput /e2e/deleted-by-upgrade "must come back"
  etcdput /e2e/nodes/node1 Ready
}

check_trees() {
  local diffs= t
  for t in $TREES; do
    diffs+=$(vm_rsync -naAXHc --delete --numeric-ids --itemize-changes \
      --exclude=/kubernetes/manifests --exclude=/systemd/system/multi-user.target.wants/ \
      "$STATE/reference/$t/" "/$t/") || fail "rsync could not compare /$t"
  done
  cmp -s "$STATE/reference/extra.conf" /opt/mco/extra.conf || diffs+=$'\nextra.conf differs'
  [ -z "$diffs" ] || fail "the trees differ from the backup: $(echo "$diffs" | head -20 | tr '\n' ' ')"
  ls -Z /etc/e2e/cluster.conf | grep -q etc_runtime_t || fail "/etc/e2e/cluster.conf lost its label: $(ls -Z /etc/e2e/cluster.conf)"
  report "trees: /etc, /usr/local, /var/lib/kubelet and the machine-config file equal the backup, SELinux labels included (rsync -naAXHc: no difference)"
}

check_recovered_node() {
  local booted k c
  booted=$(python3 -c 'import json; print(json.load(open("/var/lib/fake-rpm-ostree/state.json"))["booted"])')
  [ "$booted" = "testos-$(cat "$STATE/old").0" ] || fail "the node booted $booted, not the backup's deployment"
  ostree admin status --sysroot=/sysroot | grep -q "$(cat "$STATE/staged")" \
    && fail "the staged upgrade $(cat "$STATE/staged") is still deployed"
  grep -q 'pinned=true' "/sysroot/ostree/deploy/otheros/deploy/$(cat "$STATE/foreign").0.origin" \
    || fail "the foreign pin on otheros $(cat "$STATE/foreign") was removed"
  grep -q '"call":"Cleanup"' /var/lib/fake-rpm-ostree/calls.log \
    || fail "rpm-ostree was never asked to clean up the staged deployment"
  k=$(systemctl is-active kubelet.service); c=$(systemctl is-active crio.service)
  [ "$k" = active ] && [ "$c" = active ] && [ "$(systemctl is-enabled kubelet.service)" = enabled ] \
    || fail "kubelet $k ($(systemctl is-enabled kubelet.service)), crio $c"
  [ "$(getenforce)" = Enforcing ] || fail "SELinux is $(getenforce) after the recovery"
  report "node: booted the backup's 4.15.1 (the staged 4.17.0 removed through rpm-ostree's Cleanup, the other OS's pin intact), kubelet and CRI-O active, kubelet enabled, SELinux enforcing"
}

check_journal_complete() {
  local run=$1
  recoveryctl journal --run "$run" --json > "$OUT/journal-run$run.json" || fail "reading the journal of run $run"
  python3 - "$OUT/journal-run$run.json" <<'EOF' > "$OUT/journal-check.txt" 2>&1 || fail "journal of run $run: $(cat "$OUT/journal-check.txt")"
import json, sys
j = json.load(open(sys.argv[1]))
steps = j["steps"]
plan = [p[1] for p in j["run"]["plan"]]
names = [s["name"] for s in steps]
missing = [n for n in plan if n not in names]
assert not missing, f"steps never journaled: {missing}"
final = {}
for s in steps:
    final[s["name"]] = s["state"]
bad = {n: st for n, st in final.items() if st not in ("done", "skipped")}
assert not bad, f"steps not complete: {bad}"
assert j["run"]["state"] == "succeeded", j["run"]["state"]
boots = sorted({s["boot_id"] for s in steps})
interrupted = [f'{s["name"]}#{s["attempt"]}' for s in steps if s["state"] == "interrupted"]
print(f"{len(plan)} steps all done or skipped, in {len(boots)} boots; interrupted attempts: {', '.join(interrupted) or 'none'}")
EOF
  report "journal run $run: $(cat "$OUT/journal-check.txt")"
}

newest_recovery_run() {
  recoveryctl journal --json 2>/dev/null | python3 -c 'import json,sys
j=json.load(sys.stdin)
runs=j.get("runs", j if isinstance(j, list) else [])
print(max((r["id"] for r in runs if r.get("kind")=="recovery"), default=""))'
}

# What the runs did in one boot (by the boot id each step attempt records), for the power-cut
# table: "run 4 (backup, failed): preflight done, copy-files interrupted".
summarize_boot() {
  local boot=$1 ids r
  ids=$(rctl journal --json | python3 -c 'import json,sys
for r in sorted(json.load(sys.stdin)["runs"], key=lambda r: r["id"])[-3:]: print(r["id"])') || return 0
  for r in $ids; do
    rctl journal --run "$r" --json | python3 -c 'import json,sys
j=json.load(sys.stdin); boot=sys.argv[1]
steps=["{} {}".format(s["name"], s["state"]) for s in j["steps"] if s["boot_id"].replace("-","")==boot.replace("-","")]
r=j["run"]
if steps: print("run {} ({}, now {}): ".format(r["id"], r["kind"], r["state"]) + ", ".join(steps))' "$boot"
  done
}

# The daemon, or the engine in this process when the daemon cannot start.
rctl() { recoveryctl "$@" 2>/dev/null || recoveryctl --offline "$@" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Failpoints and power cuts

# Arm a failpoint for the daemon of this boot only (/run is gone after the cut).
arm_failpoint() {
  mkdir -p /run/systemd/system/recoveryd.service.d
  printf '[Service]\nEnvironment=RECOVERYD_FAILPOINTS=%s\n' "$1" > /run/systemd/system/recoveryd.service.d/50-failpoint.conf
  systemctl daemon-reload
  systemctl restart recoveryd.service || fail "restarting recoveryd with the failpoint $1"
}

# Wait until a failpoint has stopped recoveryd, then ask the harness to cut the power.
cut_when_stopped() {
  local label=$1 deadline=$((SECONDS + ${2:-300})) pid
  while [ $SECONDS -lt $deadline ]; do
    pid=$(stopped_at_failpoint)
    if [ -n "$pid" ]; then
      report "cut: $label (recoveryd stopped by the failpoint, pid $pid)"
      publish
      mark "CUT-NOW $label"
      sleep infinity
    fi
    sleep 0.2
  done
  fail "the failpoint for '$label' was never hit"
}

# After a cut during a backup: the journal opens, the cut run is failed with the step it was
# cut in left started (the cut came before its end was journaled), the previous good
# generation verifies, and a new backup succeeds.
after_backup_cut() {
  local cut_step=$1 last run state
  step "after the cut in '$cut_step': the journal, the previous generation, a new backup"
  wait_etcd
  recoveryctl status > "$OUT/status-after-cut.txt" 2>&1 || fail "recoveryctl status after the cut: $(cat "$OUT/status-after-cut.txt")"
  last=$(recoveryctl journal --json 2>/dev/null | python3 -c 'import json,sys
j=json.load(sys.stdin)
runs=j.get("runs", j if isinstance(j, list) else [])
r=max(runs, key=lambda r: r["id"])
print("run {} ({}) {}".format(r["id"], r["kind"], r["state"]))') || fail "the journal does not open after the cut"
  run=${last#run }; run=${run%% *}
  state=$(recoveryctl journal --run "$run" --json | python3 -c 'import json,sys
steps=[s for s in json.load(sys.stdin)["steps"] if s["name"]==sys.argv[1]]
print(steps[-1]["state"] if steps else "never started")' "$cut_step") || fail "reading run $run of the journal"
  [ "$state" = started ] || fail "the cut in $cut_step left it $state in run $run, not started (was its end journaled before the cut?)"
  case "$last" in *" failed") ;; *) fail "the cut backup is $last, not failed" ;; esac
  local good
  good=$(cat "$STATE/good-generation")
  recoveryctl verify "$good" > "$OUT/verify-good.txt" 2>&1 || fail "the previous generation $good does not verify: $(tail -3 "$OUT/verify-good.txt")"
  recoveryctl --socket /run/recoveryd/recoveryd.sock backup --wait > "$OUT/backup.txt" 2>&1 \
    || fail "a new backup after the cut failed: $(tail -5 "$OUT/backup.txt")"
  recoveryctl verify > "$OUT/verify-new.txt" 2>&1 || fail "the new generation does not verify"
  recoveryctl check > "$OUT/check.txt" 2>&1 || fail "recoveryctl check after the cut: $(tail -3 "$OUT/check.txt")"
  local gen
  gen=$(recoveryctl generations 2>/dev/null | awk 'NR==2 {print $1}')
  echo "$gen" > "$STATE/good-generation"; sync
  report "next boot: journal opens, interrupted run is $last ($cut_step left started); generation $good verifies; new backup $gen succeeded and verifies; store check clean"
  save_reference
}

# ---------------------------------------------------------------------------------------------
# The ostree-booted node (tests/vm/ostree-node.sh): the sysroot is the booted one, at /

# The booted deployment as libostree sees it: "<checksum> <version>".
ostree_booted() {
  ostree admin status | awk '/^\* / {id = $3; getline; if ($1 == "Version:") v = $2; print id, v; exit}'
}

ostree_node() {
  [ -e /run/ostree-booted ] || fail "the node is not booted from an ostree deployment (no /run/ostree-booted)"
  step "the ostree node: recoveryd and the fake rpm-ostreed on the booted sysroot (/)"
  # The plain node's test sysroot was at /sysroot; here /sysroot is the physical root, and
  # libostree finds the booted deployment only through the sysroot /.
  printf '[host]\nsysroot = "/"\n' > /etc/recoveryd/config.d/60-ostree-booted.toml
  mkdir -p /etc/systemd/system/rpm-ostreed.service.d
  printf '%s\n' '[Unit]' 'ConditionPathExists=' 'ConditionPathExists=/run/ostree-booted' '[Service]' 'ExecStart=' \
    'ExecStart=/usr/libexec/recoveryd-e2e/fake-rpm-ostreed --state /var/lib/fake-rpm-ostree/state.json --log /var/lib/fake-rpm-ostree/calls.log --txn-socket /run/rpm-ostree-transaction.sock --sysroot / --sysroot-helper /usr/libexec/recoveryd-e2e/ostree-sysroot.py' \
    > /etc/systemd/system/rpm-ostreed.service.d/50-booted-sysroot.conf
  mkdir -p /var/lib/fake-rpm-ostree
  rm -f /var/lib/fake-rpm-ostree/calls.log
  printf '{"osname":"vmos","booted":"","staged":null,"boot_default":false,"faults":{"busy":false,"no_rollback":false,"hang":false,"crash_mid_txn":false,"finish_error":null,"txn_delay_ms":200}}\n' \
    > /var/lib/fake-rpm-ostree/state.json
  chcon -t etc_runtime_t /etc/e2e/cluster.conf || fail "chcon of /etc/e2e/cluster.conf"
  # Both read their configuration when they start: the next call starts them again.
  systemctl stop recoveryd.service rpm-ostreed.service 2>/dev/null || true
  systemctl daemon-reload
  ostree admin status > "$OUT/ostree-status-first.txt" 2>&1
  report "ostree node: booted $(ostree_booted) ($(grep -o 'ostree=[^ ]*' /proc/cmdline)), /usr read-only, /usr/local -> $(readlink /usr/local)"
  sync
}

expect_os() {
  local want=$1 got marker
  got=$(ostree_booted)
  marker=$(cat /usr/lib/vm-os-version)
  [ "${got#* }" = "$want" ] && [ "$marker" = "$want" ] \
    || fail "booted $got (the deployment's /usr says $marker), expected $want"
  grep -q "ostree=/ostree/boot.[01]/vmos/" /proc/cmdline || fail "no ostree= argument of vmos on the kernel command line: $(cat /proc/cmdline)"
  report "boot: the boot loader entry booted vmos $want (${got%% *}); $(grep -o 'ostree=[^ ]*' /proc/cmdline)"
}

# The upgrade as the machine-config daemon has it done: the new commit deployed by ostree (it
# becomes the default boot loader entry), then a reboot.
ostree_upgrade() {
  step "the upgrade: ostree admin deploy vmos/stable (4.16.0), then reboot"
  ostree admin deploy --os=vmos vmos/stable > "$OUT/ostree-deploy.txt" 2>&1 || fail "ostree admin deploy: $(cat "$OUT/ostree-deploy.txt")"
  ostree admin status > "$OUT/ostree-status-upgraded.txt" 2>&1
  grep -q 'Pinned: yes' "$OUT/ostree-status-upgraded.txt" || fail "the backup did not pin the booted deployment: $(cat "$OUT/ostree-status-upgraded.txt")"
  report "upgrade: 4.16.0 deployed by ostree as the default; the backup's 4.15.1 pinned"
  publish
  mark WAITING
  systemctl reboot
  sleep infinity
}

ostree_recover() {
  step "a failed upgrade on 4.16.0: /etc, /usr/local, /var/lib/kubelet, a machine-config file and etcd changed; recover"
  echo "cluster-name: broken" > /etc/e2e/cluster.conf
  rm -f /etc/e2e/secret
  echo "added by the upgrade" > /etc/e2e/upgrade-leftover.conf
  printf '#!/bin/sh\necho tool 2\n' > /usr/local/bin/tool
  echo "kind: Broken" > /var/lib/kubelet/config.yaml
  rm -rf /var/lib/kubelet/pods/p1
  echo "extra=2" > /opt/mco/extra.conf
  wait_etcd
  etcdput /e2e/cluster broken
  sync
  recoveryctl recover > "$OUT/recover.txt" 2>&1 || fail "recoveryctl recover: $(tail -5 "$OUT/recover.txt")"
  publish
  mark WAITING
  sleep infinity
}

ostree_wait_end() {
  step "waiting for the recovery to end on the rolled-back deployment"
  local s run
  publish
  s=$(wait_recovery_end 900)
  [ "$s" = succeeded ] || fail "the recovery ended $s: $(run_field last_recovery.error)"
  run=$(newest_recovery_run)
  check_journal_complete "$run"
  check_trees
  ostree admin status > "$OUT/ostree-status-end.txt" 2>&1
  python3 - "$OUT/ostree-status-end.txt" <<'PY' > "$OUT/ostree-end-check.txt" 2>&1 || fail "$(cat "$OUT/ostree-end-check.txt")"
import sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
heads = [l for l in lines if not l.startswith("    ")]
first = heads[0]
assert first.startswith("* vmos "), f"the default deployment is not the booted one: {first.strip()}"
PY
  grep -q '"call":"Rollback"' /var/lib/fake-rpm-ostree/calls.log || fail "rpm-ostree was never asked to roll back"
  local k c
  k=$(systemctl is-active kubelet.service); c=$(systemctl is-active crio.service)
  [ "$k" = active ] && [ "$c" = active ] || fail "kubelet $k, crio $c"
  [ "$(getenforce)" = Enforcing ] || fail "SELinux is $(getenforce) after the recovery"
  report "ostree node: the rollback written by libostree made 4.15.1 the first boot loader entry; booted and default agree; kubelet and CRI-O active; SELinux enforcing"
}

# ---------------------------------------------------------------------------------------------
# The actions

action() {
  local a=$1; shift
  case "$a" in
  install)
    systemctl is-system-running --wait >/dev/null 2>&1 || true
    mark "UP $(cut -d' ' -f1 /proc/uptime)"
    install_recoveryd
    prepare_node
    ;;
  backup)
    etcd_at_backup
    backup_and_reference
    recoveryctl generations 2>/dev/null | awk 'NR==2 {print $1}' > "$STATE/good-generation"
    sync
    ;;
  recover)
    break_the_node
    step "recoveryctl recover: the daemon rolls back through rpm-ostree and reboots"
    recoveryctl recover > "$OUT/recover.txt" 2>&1 || fail "recoveryctl recover: $(tail -5 "$OUT/recover.txt")"
    publish
    mark WAITING
    sleep infinity
    ;;
  wait-reboot)
    # The resume at boot goes on by itself and reboots; report a failure instead of waiting.
    publish
    mark WAITING
    local s deadline=$((SECONDS + 600))
    while [ $SECONDS -lt $deadline ]; do
      s=$(run_field last_recovery.state)
      case "$s" in failed|timeout|cancelled) fail "the recovery ended $s: $(run_field last_recovery.error)" ;; esac
      sleep 3
    done
    fail "no reboot within 600 s"
    ;;
  wait-end)
    step "waiting for the recovery to end (it resumes by itself)"
    local s
    publish
    s=$(wait_recovery_end 900)
    [ "$s" = succeeded ] || fail "the recovery ended $s: $(run_field last_recovery.error)"
    local run
    run=$(newest_recovery_run)
    check_journal_complete "$run"
    check_trees
    check_recovered_node
    ;;
  expect-interrupted)
    # expect-interrupted <step>#<attempt>...: these attempts of the last recovery were
    # interrupted (and run again), as the cuts inside them must leave them.
    local run
    run=$(newest_recovery_run)
    python3 - "$OUT/journal-run$run.json" "$@" <<'EOF' > "$OUT/interrupted-check.txt" 2>&1 || fail "$(cat "$OUT/interrupted-check.txt")"
import json, sys
steps = json.load(open(sys.argv[1]))["steps"]
got = {f'{s["name"]}#{s["attempt"]}' for s in steps if s["state"] == "interrupted"}
missing = [a for a in sys.argv[2:] if a not in got]
assert not missing, f"attempts not interrupted although a cut came inside them: {missing} (interrupted: {sorted(got)})"
EOF
    report "journal: the cuts inside $* left those attempts interrupted, and the steps ran again"
    ;;
  check-etcd)
    wait_etcd
    [ "$(etcd_keys)" = "$(printf '/e2e/cluster=edge-042\n/e2e/deleted-by-upgrade=must come back\n/e2e/nodes/node1=Ready')" ] \
      || fail "etcd after the recovery: $(etcd_keys | tr '\n' ' ')"
    journalctl -u recoveryd --no-pager | grep -q "SELinux set back to enforcing" \
      || fail "the restore did not switch SELinux to permissive and back (permissive = true)"
    report "etcd: exactly the backup's keys; SELinux was permissive during the restores and is enforcing again"
    ;;
  check-avc)
    check_no_avc
    ;;
  uninstall)
    remove_recoveryd
    ;;
  cut-backup)
    # cut-backup <failpoint> <label>
    wait_etcd
    arm_failpoint "$1"
    step "backup with the failpoint $1"
    recoveryctl --socket /run/recoveryd/recoveryd.sock backup > "$OUT/backup-cut.txt" 2>&1 &
    cut_when_stopped "$2"
    ;;
  after-backup-cut)
    after_backup_cut "$1"
    ;;
  cut-recover)
    # cut-recover <failpoint> <label>: the failpoint in this boot's daemon, then recover
    wait_etcd
    break_the_node
    arm_failpoint "$1"
    step "recoveryctl recover with the failpoint $1"
    recoveryctl recover > "$OUT/recover.txt" 2>&1 &
    cut_when_stopped "$2"
    ;;
  cut-at-failpoint)
    # cut-at-failpoint <label>: the failpoint came with the kernel command line
    # (systemd.setenv=RECOVERYD_FAILPOINTS=...), for the resume at this boot.
    cut_when_stopped "$1" 600
    ;;
  cut-time)
    # cut-time <seconds> <label>: cut this boot a fixed time after the agent started
    report "cut: $2 (by time: $1 s after the agent started; recoveryd's last step then: $(recoveryctl journal --run "$(newest_recovery_run)" 2>/dev/null | tail -1 | tr -s ' '))"
    publish
    mark "CUT-AFTER $1 $2"
    sleep infinity
    ;;
  check-offline-resumed)
    # The boot before had the daemon masked (kernel command line): recoveryd-resume.service
    # failed and recoveryd-resume-offline.service ran the recovery's steps in its place.
    journalctl -b -1 -u recoveryd-resume.service --no-pager > "$OUT/resume-prev.txt" 2>&1
    journalctl -b -1 -u recoveryd-resume-offline.service --no-pager > "$OUT/offline-prev.txt" 2>&1
    grep -qi 'failed' "$OUT/resume-prev.txt" || fail "recoveryd-resume.service did not fail in the boot without a daemon: $(tail -3 "$OUT/resume-prev.txt")"
    grep -q 'recoveryd-resume-offline.service\|Starting\|Started' "$OUT/offline-prev.txt" \
      || fail "recoveryd-resume-offline.service did not run in the boot without a daemon"
    report "next boot: in the boot before, recoveryd-resume.service failed (daemon masked) and recoveryd-resume-offline.service resumed the run"
    ;;
  summaries)
    # What recoveryd's runs did in each boot so far, from the journal's boot ids.
    local b id
    while read -r b id; do
      printf 'B%s\t%s\n' "$b" "$(summarize_boot "$id" | tr '\n' ';')"
    done < "$STATE/boot-ids" > "$OUT/boots.txt"
    ;;
  ostree-node) ostree_node ;;
  expect-os) expect_os "$1" ;;
  ostree-upgrade) ostree_upgrade ;;
  ostree-recover) ostree_recover ;;
  ostree-wait-end) ostree_wait_end ;;
  pass)
    pass
    ;;
  *)
    fail "unknown action $a"
    ;;
  esac
}

# The guest's journal, live, on the second serial port: the harness shows it when a boot fails
# (the results disk is only written at the end of a boot, or before a cut).
journalctl -b -f -o short-monotonic --no-pager > /dev/ttyS1 2>&1 &
boots=$(( $(cat "$STATE/boots" 2>/dev/null || echo 0) + 1 ))
echo "$boots" > "$STATE/boots"; sync "$STATE/boots"
BOOT_ID=$(cat /proc/sys/kernel/random/boot_id)
mark "BOOT $boots $BOOT_ID $(getenforce) $(cut -d' ' -f1 /proc/uptime)"
echo "$boots $BOOT_ID" >> "$STATE/boot-ids"; sync "$STATE/boot-ids"
while read -r line; do
  [ -n "$line" ] || continue
  # shellcheck disable=SC2086
  action $line
done < "$JOB/actions"
pass
