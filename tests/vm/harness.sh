#!/usr/bin/env bash
# recoveryd on a real machine: a qemu guest with its own kernel, SELinux enforcing with our
# module, the RPM installed by rpm (scriptlets included), real reboots and real power cuts.
#
# Usage: tests/vm/harness.sh all | install | cycle | power-cuts | ostree
#
#   install     rpm -i in a fresh guest; the scriptlets' effects checked; the node prepared
#   cycle       backup -> failed upgrade -> recover -> rollback reboot -> resume at boot ->
#               reboot -> resume to the end, enforcing throughout; trees (labels included),
#               units, etcd, journal; zero AVC denials for recoveryd_t; then rpm -e
#   power-cuts  qemu SIGKILLed at 8 points of backups and of a recovery (by failpoint and by
#               time, in 9 boots: a cut at a reboot is that reboot); after each, the next
#               boot must resume or a new backup must succeed; a table of what happened
#   ostree      the installed guest made an ostree-booted node (tests/vm/ostree-node.sh),
#               booted as a BLS boot loader boots it: backup, a real `ostree admin deploy` of
#               the upgrade, its boot, recover; the rollback must make the next boot loader
#               entry the pinned deployment's, and the node must boot it and finish there
#   all         install, then cycle, power-cuts and ostree from the installed guest
#
# The guest image (tests/vm/image.sh) is cached in $RECOVERYD_VM_CACHE (default
# target/vm-cache). Needs root, qemu-system-x86, mmdebstrap, rpm, xfsprogs
# (tests/setup-host.sh installs them). Nothing is skipped: a missing piece fails the run.
#
# The power-cut model: qemu is killed with SIGKILL. Its disks use cache=none (O_DIRECT on the
# host files), so what the guest had written to its virtual disks is in the host's files and
# survives; what the guest kernel still held in its page cache (not yet written, or written
# but never flushed by fsync) is lost with the process. This is power loss with a disk whose
# write cache is safe; a drive that loses or reorders its volatile cache is not modelled.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
SCENARIO=${1:?usage: harness.sh all|install|cycle|power-cuts}
TARGET=${CARGO_TARGET_DIR:-$PROJECT/target}
CACHE=${RECOVERYD_VM_CACHE:-$TARGET/vm-cache}
WORK=$(mktemp -d /var/tmp/recoveryd-vm.XXXXXX)
QEMU_PIDS=()
T0=$SECONDS

say() { printf '[vm %s %4ds] %s\n' "$SCENARIO" $((SECONDS - T0)) "$*" >&2; }
detail() { printf '    %s\n' "$*" >&2; }

fail() {
  printf '\n[vm %s] FAILED: %s\n' "$SCENARIO" "$*" >&2
  if [ -n "${LAST_CONSOLE:-}" ] && [ -f "$LAST_CONSOLE" ]; then
    printf -- '--- the guest console (last lines of %s) ---\n' "$(basename "$LAST_CONSOLE")" >&2
    tail -n 40 "$LAST_CONSOLE" >&2
  fi
  if [ -n "${LAST_JOURNAL:-}" ] && [ -s "$LAST_JOURNAL" ]; then
    printf -- '--- the guest journal of that boot (last lines, from its second serial port) ---\n' >&2
    tail -n 60 "$LAST_JOURNAL" >&2
  fi
  exit 1
}

cleanup() {
  local rc=$? p
  for p in "${QEMU_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  pkill -9 -f "qemu-system-x86_64 .*$WORK/" 2>/dev/null || true
  if [ "${KEEP_VM:-0}" = 1 ] || [ $rc != 0 ]; then echo "kept $WORK" >&2; else rm -rf --one-file-system "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# What the run needs

require() {
  [ "$(id -u)" = 0 ] || fail "the VM tier needs root (mmdebstrap, setfiles in a chroot)"
  local c
  for c in qemu-system-x86_64 qemu-img mmdebstrap rpmbuild mkfs.xfs mkfs.ext4 tar ostree rsync getfattr setfattr chattr; do
    command -v "$c" >/dev/null || fail "$c is missing (tests/setup-host.sh installs it)"
  done
}

# KVM only where the host's KVM runs stock kernels (kvm_intel or kvm_amd). Some machines have
# a /dev/kvm from kvm_pvm, which runs only PVM guest kernels: the Debian kernel hangs there.
accel() {
  if [ -w /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }; then
    echo "-accel kvm -cpu host"
  else
    # The baseline x86-64 model: glibc and the rest then take their SSE2 paths, which the
    # emulator runs faster than the AVX ones "-cpu max" offers (boot to the agent 23 s instead
    # of 28 s here). recoveryd's own code does not depend on the model.
    echo "-accel tcg,thread=multi -cpu qemu64"
  fi
}

prepare() {
  say "The guest image (built once per recipe, cached in $CACHE)"
  IMAGE=$("$HERE/image.sh" "$CACHE") || fail "building the guest image"
  detail "$IMAGE: kernel $(cat "$IMAGE/kernel-version"), $(du -h "$IMAGE/root.qcow2" | cut -f1) root image"
  say "The RPMs (rpm/build.sh, static release binaries) and the job's payload"
  local bin
  bin=$("$PROJECT/deploy/build-static.sh" --example fake-rpm-ostreed) || fail "building the release binaries"
  local p=$WORK/payload
  mkdir -p "$p/rpm" "$p/node" "$p/cluster-bin"
  RECOVERYD_BIN_DIR=$bin "$PROJECT/rpm/build.sh" "$WORK/rpmbuild-out" >"$WORK/rpm-build.log" 2>&1 \
    || { cat "$WORK/rpm-build.log" >&2; fail "rpm/build.sh"; }
  find "$WORK/rpmbuild-out" -name '*.rpm' ! -name '*.src.rpm' -exec cp {} "$p/rpm/" \;
  rpmbuild -bb --quiet --define "_topdir $WORK/rpmbuild-base" "$HERE/guest/vm-node-base.spec" >"$WORK/base-build.log" 2>&1 \
    || { cat "$WORK/base-build.log" >&2; fail "building vm-node-base"; }
  find "$WORK/rpmbuild-base" -name '*.rpm' -exec cp {} "$p/rpm/" \;
  detail "$(cd "$p/rpm" && ls | tr '\n' ' ')"
  install -m 0755 "$bin/examples/fake-rpm-ostreed" "$p/fake-rpm-ostreed"
  install -m 0755 "$PROJECT/tests/support/ostree-sysroot.py" "$p/ostree-sysroot.py"
  cp "$PROJECT"/tests/support/cluster-bin/* "$p/cluster-bin/"
  cp "$PROJECT"/tests/e2e/node/*.service "$p/node/"
  cp "$PROJECT/tests/support/org.projectatomic.rpmostree1.conf" "$HERE/guest/node/50-vm.toml" "$p/node/"
  cp "$HERE/guest/agent.sh" "$WORK/agent.sh"
}

# ---------------------------------------------------------------------------------------------
# Guests

declare -A BOOTS KIND

# new_node NAME [FROM]: a guest disk (a qcow2 overlay) and its recovery partition (XFS with
# reflink, 3 GiB sparse), fresh from the image or copied from another node's.
new_node() {
  local name=$1 from=${2:-} d=$WORK/$1
  mkdir -p "$d"
  if [ -z "$from" ]; then
    qemu-img create -q -f qcow2 -b "$IMAGE/root.qcow2" -F qcow2 "$d/root.qcow2"
    truncate -s 3G "$d/recovery.img"
    mkfs.xfs -q -m reflink=1 -L vm-recovery "$d/recovery.img"
  else
    # The other node's disk, frozen: it is not booted again while this one uses it.
    qemu-img create -q -f qcow2 -b "$WORK/$from/root.qcow2" -F qcow2 "$d/root.qcow2"
    cp --sparse=always "$WORK/$from/recovery.img" "$d/recovery.img"
  fi
  BOOTS[$name]=0
  KIND[$name]=plain
}

# new_ostree_node NAME: the installed guest (node base) as an ostree-booted node: root and
# /boot file systems of its own (raw, read by the boot loader here), the recovery partition
# copied from the installed guest.
new_ostree_node() {
  local name=$1 d=$WORK/$1
  mkdir -p "$d"
  "$HERE/ostree-node.sh" "$WORK/base/root.qcow2" "$d" || fail "building the ostree node"
  cp --sparse=always "$WORK/base/recovery.img" "$d/recovery.img"
  BOOTS[$name]=0
  KIND[$name]=ostree
}

# The boot loader of an ostree node, as GRUB's blscfg and systemd-boot choose: of the entries
# in /boot/loader/entries (ostree switches /boot/loader between loader.0 and loader.1), the one
# with the highest version; its linux, initrd and options boot the guest. Sets BLS_KERNEL,
# BLS_INITRD, BLS_OPTIONS and BLS_ENTRY.
bls_select() {
  local d=$WORK/$1 m=$WORK/$1/boot-mnt best= bestv=-1 e v
  mkdir -p "$m"
  # As a boot loader reads it: read-only, no journal replayed.
  mount -o ro,noload,loop "$d/boot.img" "$m" || fail "$1: cannot mount its /boot"
  for e in "$m"/loader/entries/*.conf; do
    [ -e "$e" ] || continue
    v=$(awk '$1 == "version" {print $2}' "$e")
    if [ "${v:-0}" -gt "$bestv" ]; then bestv=${v:-0}; best=$e; fi
  done
  if [ -z "$best" ]; then umount "$m"; fail "$1: no boot loader entry in /boot/loader/entries"; fi
  BLS_ENTRY="$(readlink "$m/loader")/entries/$(basename "$best") (version $bestv)"
  BLS_OPTIONS=$(awk '$1 == "options" {$1 = ""; print substr($0, 2)}' "$best")
  cp "$m$(awk '$1 == "linux" {print $2}' "$best")" "$d/bls-vmlinuz"
  cp "$m$(awk '$1 == "initrd" {print $2}' "$best")" "$d/bls-initrd"
  cp "$best" "$d/bls-entry-$((BOOTS[$1] + 1)).conf"
  umount "$m"
  BLS_KERNEL=$d/bls-vmlinuz BLS_INITRD=$d/bls-initrd
}

# disk_times DIR: each disk image's name and change time (a node has a qcow2 root or raw ones).
disk_times() {
  find "$1" -maxdepth 1 -type f \( -name '*.img' -o -name '*.qcow2' \) -printf '%p %C@\n' | sort
}

# vm_boot NODE EXPECT CMDLINE ACTION... : boot the node once with these agent actions (one a
# line), and wait for it to end. EXPECT: pass (the agent says PASS and powers off), reboot
# (the guest reboots by itself), cut (the agent asks for a power cut). Sets OUTCOME.
vm_boot() {
  local node=$1 expect=$2 cmdline=$3; shift 3
  local d=$WORK/$node n
  n=$((BOOTS[$node] + 1)); BOOTS[$node]=$n
  local job=$d/job-$n console=$d/console-$n.log out=$d/out-$n
  mkdir -p "$job" "$out"
  cp "$WORK/agent.sh" "$job/agent.sh"
  printf '%s\n' "$@" > "$job/actions"
  ln -s "$WORK/payload" "$job/payload"
  tar -chf "$d/job.img" -C "$job" .
  rm -f "$d/out.img"; truncate -s 64M "$d/out.img"
  LAST_CONSOLE=$console LAST_JOURNAL=$d/journal-$n.log
  local kernel=$IMAGE/vmlinuz initrd=$IMAGE/initrd.img args="root=LABEL=vm-root ro"
  local disks=(-drive "file=$d/root.qcow2,format=qcow2,if=virtio,cache=none")
  if [ "${KIND[$node]}" = ostree ]; then
    bls_select "$node"
    kernel=$BLS_KERNEL initrd=$BLS_INITRD args=$BLS_OPTIONS
    disks=(-drive "file=$d/root.img,format=raw,if=virtio,cache=none" -drive "file=$d/boot.img,format=raw,if=virtio,cache=none")
    detail "$node boot $n: the boot loader chose $BLS_ENTRY: $BLS_OPTIONS"
  fi
  local t_start=$SECONDS try=1 status before
  while :; do
    # The disks' change times before the guest runs: if qemu itself dies, they tell whether the
    # guest wrote anything (a write through O_DIRECT updates them like any other).
    before=$(disk_times "$d")
    # shellcheck disable=SC2046
    qemu-system-x86_64 $(accel) -machine q35 -m 2048 -smp 2 -display none -monitor none -no-reboot \
      -serial "file:$console" -serial "file:$d/journal-$n.log" \
      -kernel "$kernel" -initrd "$initrd" \
      -append "$args console=ttyS0 selinux=1 security=selinux enforcing=1 panic=-1 quiet loglevel=3 $cmdline" \
      "${disks[@]}" \
      -drive "file=$d/recovery.img,format=raw,if=virtio,cache=none" \
      -drive "file=$d/job.img,format=raw,if=none,id=ctl,readonly=on" -device virtio-blk-pci,drive=ctl,serial=harness-ctl \
      -drive "file=$d/out.img,format=raw,if=none,id=out,cache=none" -device virtio-blk-pci,drive=out,serial=harness-out \
      >"$d/qemu-$n.log" 2>&1 &
    local qpid=$! deadline=$((SECONDS + ${VM_BOOT_TIMEOUT:-900})) cut= line
    QEMU_PIDS+=("$qpid")
    while kill -0 "$qpid" 2>/dev/null; do
      if [ $SECONDS -ge $deadline ]; then kill -9 "$qpid"; wait "$qpid" 2>/dev/null || true; fail "$node boot $n: no end within ${VM_BOOT_TIMEOUT:-900}s"; fi
      if line=$(grep -a -m1 -o 'VMTEST CUT-NOW .*' "$console" 2>/dev/null); then
        kill -9 "$qpid"; cut=${line#VMTEST CUT-NOW }; break
      fi
      if line=$(grep -a -m1 -o 'VMTEST CUT-AFTER .*' "$console" 2>/dev/null); then
        line=${line#VMTEST CUT-AFTER }
        sleep "${line%% *}"; kill -9 "$qpid"; cut=${line#* }; break
      fi
      sleep 0.1
    done
    status=0; wait "$qpid" 2>/dev/null || status=$?
    # qemu's multi-threaded emulator has a rare race of its own: an assertion in its memory map
    # (seen once: physmem.c iotlb_to_section, in the firmware, before the kernel printed a line).
    # That is no outcome of the guest's; when it aborts before the guest wrote to any disk, the
    # same boot is started again, at most twice, and said so. Any other end goes on below.
    if [ -z "$cut" ] && [ "$status" = 134 ] && grep -aq 'Assertion' "$d/qemu-$n.log" \
      && [ "$before" = "$(disk_times "$d")" ] && [ $try -lt 3 ]; then
      detail "$node boot $n: qemu itself aborted before the guest wrote to a disk ($(grep -a -m1 'Assertion' "$d/qemu-$n.log")); starting the same boot again"
      mv "$d/qemu-$n.log" "$d/qemu-$n.aborted-$try.log"
      try=$((try + 1)); continue
    fi
    [ "$status" = 134 ] && detail "$node boot $n: qemu aborted: $(tail -1 "$d/qemu-$n.log")"
    break
  done
  tar -xf "$d/out.img" -C "$out" 2>/dev/null || true
  local took=$((SECONDS - t_start)) up
  up=$(grep -a -o 'VMTEST BOOT [0-9]* [^ ]* [A-Za-z]* [0-9.]*' "$console" | head -1 | awk '{print $6}')
  if [ -n "$cut" ]; then OUTCOME=cut
  elif grep -aq 'VMTEST PASS' "$console"; then OUTCOME=pass
  elif line=$(grep -a -m1 -o 'VMTEST FAIL .*' "$console"); then fail "$node boot $n: ${line#VMTEST FAIL }"
  elif grep -aq 'VMTEST POWEROFF' "$console"; then OUTCOME=poweroff
  elif grep -aq 'VMTEST BOOT' "$console"; then OUTCOME=reboot
  else fail "$node boot $n: the agent never ran"
  fi
  detail "$node boot $n ($*): $OUTCOME after ${took}s (agent started at ${up:-?}s of guest uptime)${cut:+; power cut: $cut}"
  [ "$OUTCOME" = "$expect" ] || fail "$node boot $n: expected $expect, got $OUTCOME"
  [ "$(grep -a -o 'VMTEST BOOT [0-9]* [^ ]* [A-Za-z]*' "$console" | head -1 | awk '{print $5}')" = Enforcing ] \
    || fail "$node boot $n: SELinux was not enforcing at boot"
}

# ---------------------------------------------------------------------------------------------
# Scenarios

install_node() {
  if [ -n "${VM_REUSE_BASE:-}" ]; then
    # For working on the harness only: the installed guest of an earlier kept run (KEEP_VM=1).
    say "Install: reusing the installed guest of $VM_REUSE_BASE (VM_REUSE_BASE)"
    mkdir -p "$WORK/base/out-1"
    cp --sparse=always "$VM_REUSE_BASE/base/root.qcow2" "$VM_REUSE_BASE/base/recovery.img" "$WORK/base/"
    cp "$VM_REUSE_BASE/base/out-1/report.txt" "$WORK/base/out-1/"
    return
  fi
  say "Install: a fresh guest, SELinux enforcing; rpm -i of the package, scriptlets and all"
  new_node base
  vm_boot base pass "" install
  cut -f2- "$WORK/base/out-1/report.txt" | sed "s/^/    /" >&2
}

cycle() {
  say "Cycle: backup -> failed upgrade -> recover -> reboots -> resumed at boot, enforcing throughout"
  new_node cycle base
  vm_boot cycle reboot "" backup recover
  vm_boot cycle reboot "" wait-reboot
  vm_boot cycle pass "" wait-end check-etcd check-avc uninstall
  cut -f2- "$WORK/cycle/out-3/report.txt" | sed "s/^/    /" >&2
}

# Each cut, and what the boot after it must do.
power_cuts() {
  say "Power cuts: qemu SIGKILLed at 8 points of backups and of a recovery"
  new_node cuts base
  local FP=systemd.setenv=RECOVERYD_FAILPOINTS
  vm_boot cuts cut "" backup "cut-backup copy-files:during@40:stop backup:in-the-middle-of-copying-files"
  vm_boot cuts cut "" "after-backup-cut copy-files" "cut-backup commit:after:stop backup:commit-done,-not-yet-journaled"
  vm_boot cuts cut "" "after-backup-cut commit" "cut-backup verify-generation:before:stop backup:verify-started,-nothing-verified"
  vm_boot cuts cut "" "after-backup-cut verify-generation" "cut-recover check-deployment:after:stop recovery:rollback-done,-not-yet-journaled"
  # The resume at boot runs the rollback step again (idempotent); the power goes while it asks
  # for the reboot into the rolled-back deployment, so the power cut is that reboot.
  vm_boot cuts cut "$FP=reboot-after-rollback:before:stop" "cut-at-failpoint recovery:rollback-reboot-being-requested"
  vm_boot cuts cut "$FP=restore-etc:during@3:stop" "cut-at-failpoint recovery:in-the-middle-of-restoring-/etc"
  # This boot the daemon cannot start (masked on the kernel command line): the offline unit
  # resumes the recovery, and the power goes while it asks for the reboot.
  vm_boot cuts cut "$FP=reboot:before:stop systemd.mask=recoveryd.service" "cut-at-failpoint recovery:reboot-being-requested-(offline-unit)"
  vm_boot cuts cut "" "check-offline-resumed" "cut-time 6 recovery:6s-into-the-last-boot's-agent"
  # The steps a failpoint cut inside (not at a reboot, which counts as done once the node has
  # booted again) ran again after an interrupted attempt.
  vm_boot cuts pass "" wait-end "expect-interrupted check-deployment#1 restore-etc#1" check-etcd check-avc summaries
  say "The power-cut table"
  python3 - "$WORK/cuts/out-${BOOTS[cuts]}" >&2 <<'EOF'
import collections, os, sys
d = sys.argv[1]
by_boot = collections.defaultdict(list)
for name in ("report.txt", "boots.txt"):
    for l in open(os.path.join(d, name)):
        b, _, text = l.rstrip("\n").partition("\t")
        if text.strip(" ;"):
            by_boot[int(b[1:])].append(("journal: " if name == "boots.txt" else "") + text.strip(" ;"))
print(f"    {'boot':>4} | {'cut point':<58} | the boot after it")
for b in sorted(by_boot):
    for line in by_boot[b]:
        if line.startswith("cut: "):
            after = [l for l in by_boot.get(b + 1, []) if not l.startswith("cut: ")]
            print(f"    {b:>4} | {line[5:][:58]:<58} | {' / '.join(after) or '-'}")
print("    every boot after a cut: result ok (the chain stops at the first failed check)")
EOF
}

# The rollback on a node booted from a real ostree deployment: the upgrade deployed and booted
# by ostree itself, the rollback written by libostree (through the fake rpm-ostreed), and each
# boot's kernel, initramfs and ostree= argument taken from the loader entry ostree wrote.
ostree_rollback() {
  say "ostree: the installed guest booted from an ostree deployment; upgrade, recover, rollback by the boot loader entry"
  new_ostree_node otree
  detail "vmos 4.15.1 $(cut -c1-12 "$WORK/otree/old") deployed; 4.16.0 $(cut -c1-12 "$WORK/otree/new") on vmos/stable"
  vm_boot otree reboot "" "ostree-node" "expect-os 4.15.1" backup ostree-upgrade
  vm_boot otree reboot "" "expect-os 4.16.0" ostree-recover
  vm_boot otree reboot "" "expect-os 4.15.1" wait-reboot
  vm_boot otree pass "" "expect-os 4.15.1" ostree-wait-end check-avc
  cut -f2- "$WORK/otree/out-${BOOTS[otree]}/report.txt" | sed "s/^/    /" >&2
}

require
prepare
case "$SCENARIO" in
install) install_node ;;
cycle) install_node; cycle ;;
power-cuts) install_node; power_cuts ;;
ostree) install_node; ostree_rollback ;;
all)
  # One after the other: two guests at once under emulation took 2.5 times as long each
  # (four vCPU threads on two cores), longer than both in turn.
  install_node; cycle; power_cuts; ostree_rollback ;;
*) fail "unknown scenario $SCENARIO" ;;
esac
say "PASS: $SCENARIO"
