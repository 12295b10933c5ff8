#!/usr/bin/env bash
# Install what the tests and the demo need on a Debian 12 machine (run as root).
# Idempotent: packages already present are not reinstalled.
set -euo pipefail

PACKAGES=(
  dbus            # a real dbus-daemon for the private test bus
  ostree          # the real ostree CLI on a test sysroot
  rsync acl attr  # the independent fidelity checker, setfacl/setfattr
  util-linux      # setpriv (non-root callers), mount
  systemd systemd-container mmdebstrap zstd  # real systemd as PID 1 in systemd-nspawn
  rpm rpmlint cpio python3-yaml               # building and checking the RPM; the Job manifest
  python3-pip     # kubernetes-validate (PyPI), for tests/validate-manifests.py
  python3-gi gir1.2-ostree-1.0                # libostree from the fake rpm-ostreed (writing a test sysroot)
  selinux-policy-dev checkpolicy semodule-utils  # compiling the SELinux module
  selinux-policy-default bzip2  # linking it against the whole reference policy (neverallows)
  gcc make time   # time: peak memory in bench/bench.py
  podman runc     # building the FROM-scratch images and running the backup Job's image
  busybox-static  # a shell inside the test images (tests/images.rs)
  strace          # counting a restore's system calls (tests/syscalls.rs)
  xfsprogs e2fsprogs  # the VM tier's disks: the XFS recovery partition, the ext4 root image
)

# The VM tier (tests/vm) boots qemu guests. qemu-system-x86 must come from the same suite as
# the installed qemu-utils (these machines ship it from bookworm-backports; bookworm's 7.2
# would replace it with an older one).
VM_PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data seabios)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
vm_missing=()
for p in "${VM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || vm_missing+=("$p")
done
qemu_suite=
if ((${#vm_missing[@]})) && dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q '~bpo12'; then
  qemu_suite=bookworm-backports
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/bookworm-backports.list
  fi
fi
if ((${#missing[@]})) || ((${#vm_missing[@]})); then
  echo "setup-host: installing ${missing[*]} ${vm_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ((${#missing[@]})); then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ((${#vm_missing[@]})); then
    apt-get install -y -qq --no-install-recommends ${qemu_suite:+-t "$qemu_suite"} "${vm_missing[@]}" >/dev/null
  fi
fi

# policycoreutils (pulled in by selinux-policy-dev) writes /etc/selinux/config with
# SELINUX=permissive even though this kernel has no SELinux; libostree then tries to label
# files with a policy that does not exist and `ostree admin pin` fails. Say what is true.
if [ ! -d /sys/fs/selinux ] && grep -qE '^SELINUX=(permissive|enforcing)' /etc/selinux/config 2>/dev/null; then
  sed -i -E 's/^SELINUX=(permissive|enforcing)/SELINUX=disabled/' /etc/selinux/config
fi

if ! command -v cargo >/dev/null; then
  echo "setup-host: cargo is missing; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
