#!/usr/bin/env bash
# The guest image of the VM test tier: Debian 12 with its kernel, systemd, dbus, SELinux
# (the reference policy, enforcing, labelled here at build time), auditd, rpm, ostree, xfsprogs
# and etcd, from Debian's packages only. The initramfs holds only what mounts the root
# (virtio, ext4): a third of the kernel's part of each boot under emulation is unpacking it.
#
#   tests/vm/image.sh CACHE_DIR      # prints the directory holding root.qcow2, vmlinuz, initrd.img
#
# The image is cached under CACHE_DIR by the hash of this file, of vm-job.service (the one
# unit of the harness in the image) and of guest/vmtest_anaconda.te (the base OS's install_t):
# changing the recipe rebuilds it.
# Nothing of recoveryd is in the image; each test run installs the RPM in the guest (tests/vm).
set -euo pipefail

cache=${1:?usage: image.sh CACHE_DIR}
self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")
key=$(cat "$self" "$here/vm-job.service" "$here/guest/vmtest_anaconda.te" | sha256sum | cut -c1-16)
dir=$cache/image-$key
if [ -s "$dir/root.qcow2" ] && [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ]; then
  echo "$dir"
  exit 0
fi
log() { printf 'tests/vm/image.sh: %s\n' "$*" >&2; }

PACKAGES=(
  linux-image-amd64 initramfs-tools
  systemd systemd-sysv udev dbus libpam-systemd
  # SELinux: Debian's reference policy, its tools, and the audit log the AVC check reads.
  selinux-policy-default policycoreutils selinux-utils auditd
  # What the node runs or the test needs: the package manager recoveryd is installed with, a
  # real ostree sysroot for the fake rpm-ostreed (written through libostree), XFS for the
  # recovery partition, a real etcd, and the tools that compare trees.
  rpm ostree python3-gi gir1.2-ostree-1.0 xfsprogs etcd-server etcd-client
  rsync attr acl procps kmod
  # What boots an ostree deployment (tests/vm/ostree-node.sh): ostree-prepare-root and its
  # dracut module; dracut-core alone does not displace initramfs-tools (dracut would); and
  # bubblewrap, in which `ostree admin deploy` refreshes the new deployment's SELinux policy.
  ostree-boot dracut-core bubblewrap
)

work=$cache/build-$key.partial
# Never follow a mount out of the build directory (an interrupted mmdebstrap or the /proc of
# the labelling step may leave one behind).
clean_work() {
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$work"
}
clean_work
mkdir -p "$work"
trap clean_work EXIT
tree=$work/tree
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}

log "building the guest image (once for this recipe; cached in $dir)"
# The hooks run on the host with the tree as $1: the guest's configuration, then the labels.
mmdebstrap --mode=root --variant=minbase --quiet \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --customize-hook='echo vm-node > "$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1 localhost\n::1 localhost\n127.0.1.1 vm-node\n" > "$1/etc/hosts"' \
  --customize-hook='printf "LABEL=vm-root / ext4 defaults,errors=remount-ro 0 1\nLABEL=vm-recovery /var/recovery xfs defaults 0 2\n" > "$1/etc/fstab"' \
  --customize-hook='mkdir -p "$1/var/recovery" "$1/var/log/journal"' \
  --customize-hook='chroot "$1" systemctl mask getty@.service serial-getty@.service console-getty.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer systemd-networkd-wait-online.service >/dev/null 2>&1' \
  --customize-hook='chroot "$1" passwd -d root >/dev/null' \
  --customize-hook="cp '$here/vm-job.service' \"\$1/etc/systemd/system/vm-job.service\"" \
  --customize-hook='chroot "$1" systemctl enable vm-job.service >/dev/null 2>&1' \
  --customize-hook='printf "MODULES=list\n" > "$1/etc/initramfs-tools/conf.d/vm-modules"' \
  --customize-hook='printf "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n" >> "$1/etc/initramfs-tools/modules"' \
  --customize-hook='chroot "$1" update-initramfs -u -k all >/dev/null 2>&1' \
  bookworm "$tree" "$mirror" >"$work/mmdebstrap.log" 2>&1 \
  || { tail -40 "$work/mmdebstrap.log" >&2; log "mmdebstrap failed"; exit 1; }

kver=$(ls "$tree/lib/modules" | sort -V | tail -1)
# The kernel and an initramfs where ostree expects them in a commit (/usr/lib/modules/KVER),
# for the ostree-booted node made from this tree: dracut with ostree's module, which mounts the
# deployment named by ostree= on the kernel command line; uncompressed, as it unpacks faster
# under emulation than it decompresses.
cp "$tree/boot/vmlinuz-$kver" "$tree/usr/lib/modules/$kver/vmlinuz"
mount -t proc proc "$tree/proc"
chroot "$tree" dracut --quiet --force --no-hostonly --no-compress --reproducible \
  --modules "base systemd systemd-initrd dracut-systemd udev-rules kernel-modules rootfs-block fs-lib ostree" \
  --drivers "virtio_pci virtio_blk ext4 crc32c_generic" \
  "/usr/lib/modules/$kver/initramfs.img" "$kver" >"$work/dracut.log" 2>&1 \
  || { umount "$tree/proc"; tail -30 "$work/dracut.log" >&2; log "dracut failed"; exit 1; }
umount "$tree/proc"
grep -q ostree-prepare-root <(cpio -t <"$tree/usr/lib/modules/$kver/initramfs.img" 2>/dev/null) \
  || { log "the dracut initramfs has no ostree-prepare-root"; exit 1; }

# RHEL and RHCOS call their policy "targeted", and the RPM's scriptlets install the module
# only into a policy of that name (%selinux_modules_install -s targeted): Debian's reference
# policy is given that name here, so that the package's scriptlets run unchanged.
mv "$tree/etc/selinux/default" "$tree/etc/selinux/targeted"
mv "$tree/var/lib/selinux/default" "$tree/var/lib/selinux/targeted"
cat > "$tree/etc/selinux/config" <<'CFG'
SELINUX=enforcing
SELINUXTYPE=targeted
CFG
# The base OS's install_t, the domain RHCOS runs rpm-ostree and ostree in (see the module),
# compiled with the machine's reference-policy headers (the same Debian release) and installed
# into the guest's policy store; -n: nothing to reload in a chroot.
mkdir -p "$work/selinux"
cp "$here/guest/vmtest_anaconda.te" "$work/selinux/"
make -s -C "$work/selinux" -f /usr/share/selinux/devel/Makefile vmtest_anaconda.pp >"$work/selinux.log" 2>&1 \
  || { cat "$work/selinux.log" >&2; log "compiling vmtest_anaconda.pp failed"; exit 1; }
cp "$work/selinux/vmtest_anaconda.pp" "$tree/tmp/"
chroot "$tree" semodule -n -s targeted -i /tmp/vmtest_anaconda.pp >"$work/semodule.log" 2>&1 \
  || { cat "$work/semodule.log" >&2; log "semodule -i vmtest_anaconda.pp failed"; exit 1; }
rm "$tree/tmp/vmtest_anaconda.pp"
chroot "$tree" semodule -s targeted -l | grep -qx vmtest_anaconda || { log "vmtest_anaconda is not in the guest's policy"; exit 1; }
# Labels at build time: a first-boot relabel takes minutes under emulation.
policy=$(ls "$tree"/etc/selinux/targeted/policy/policy.* | sort -V | tail -1)
mount -t proc proc "$tree/proc"
chroot "$tree" setfiles -m -F -e /proc -e /sys -e /dev -c "${policy#"$tree"}" \
  /etc/selinux/targeted/contexts/files/file_contexts / >"$work/setfiles.log" 2>&1 \
  || { umount "$tree/proc"; tail "$work/setfiles.log" >&2; log "setfiles failed"; exit 1; }
umount "$tree/proc"

mkdir -p "$work/out"
cp "$tree/boot/vmlinuz-$kver" "$work/out/vmlinuz"
cp "$tree/boot/initrd.img-$kver" "$work/out/initrd.img"
# The file is made first: given a missing file, mke2fs says "Creating regular file" on stdout
# even with -q, and this script's stdout is the image directory, nothing else.
rm -f "$work/root.img"
truncate -s 4G "$work/root.img"
mkfs.ext4 -q -L vm-root -d "$tree" "$work/root.img" >&2
qemu-img convert -O qcow2 "$work/root.img" "$work/out/root.qcow2"
echo "$kver" > "$work/out/kernel-version"
rm -rf "$dir"
mv "$work/out" "$dir"
log "image ready: $(du -sh "$dir" | cut -f1) in $dir (kernel $kver)"
echo "$dir"
