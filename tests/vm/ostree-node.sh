#!/usr/bin/env bash
# An ostree-booted node made from an installed guest's disk: its /usr and /etc committed twice
# to an ostree repository (4.15.1, the OS the node runs, and 4.16.0, its upgrade, on the branch
# vmos/stable), 4.15.1 deployed with `ostree admin deploy` into a sysroot whose /boot is its
# own file system, as on RHCOS. The guest boots it with the kernel, initramfs and arguments of
# the boot loader entry ostree wrote (tests/vm/harness.sh reads /boot/loader/entries as a BLS
# boot loader does); the upgrade is deployed in the guest by the real ostree.
#
#   tests/vm/ostree-node.sh INSTALLED_DISK OUT_DIR    # writes OUT_DIR/root.img, OUT_DIR/boot.img
#
# The installed guest holds recoveryd (rpm -i, scriptlets run, module loaded) and the prepared
# node; both commits carry it, as both deployments of a node carry what is layered on it.
# Labels: the commit keeps the files' own (the guest's, set by its policy and by the install);
# the few directories made here get those of their counterparts on the installed disk.
set -euo pipefail

disk=${1:?usage: ostree-node.sh INSTALLED_DISK OUT_DIR}
out=${2:?usage: ostree-node.sh INSTALLED_DISK OUT_DIR}
work=$out/build
log() { printf 'tests/vm/ostree-node.sh: %s\n' "$*" >&2; }
mkdir -p "$work/mnt"
cleanup() {
  umount "$work/mnt" 2>/dev/null || true
  # ostree makes each deployment's root immutable.
  chattr -i "$work"/sysroot/ostree/deploy/*/deploy/*.0 2>/dev/null || true
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

qemu-img convert -O raw "$disk" "$work/installed.raw"
mount -o ro,loop "$work/installed.raw" "$work/mnt"
m=$work/mnt
label_of() { getfattr -h --only-values -n security.selinux "$1" 2>/dev/null | tr -d '\0'; }
set_label() { setfattr -h -n security.selinux -v "$2" "$1"; }

# The deployment's tree: /usr, /etc as /usr/etc, the merged-/usr links, and ostree's layout,
# where everything that lives outside /usr and /etc is a link into /var (RHCOS's layout).
t=$work/tree
mkdir -p "$t"
set_label "$t" "$(label_of "$m")"
rsync -aAXH --numeric-ids "$m/usr/" "$t/usr/"
rsync -aAXH --numeric-ids "$m/etc/" "$t/usr/etc/"
for l in bin sbin lib lib32 lib64 libx32; do
  if [ -L "$m/$l" ]; then cp -a "$m/$l" "$t/"; fi
done
for d in dev proc sys run tmp boot var sysroot; do
  mkdir -p "$t/$d"
  set_label "$t/$d" "$(label_of "$m/$d" || label_of "$m")"
done
ln -s sysroot/ostree "$t/ostree"
for pair in home:var/home root:var/roothome opt:var/opt srv:var/srv mnt:var/mnt media:run/media; do
  ln -s "${pair#*:}" "$t/${pair%%:*}"
done
# /usr/local is /var/usrlocal on RHCOS: the node's tools live on there, writable.
rm -rf "$t/usr/local"
ln -s ../var/usrlocal "$t/usr/local"
for l in ostree home root opt srv mnt media usr/local; do
  set_label "$t/$l" system_u:object_r:usr_t:s0
done
# The root and boot file systems of this node.
printf '%s\n' "LABEL=vm-oroot / ext4 defaults,errors=remount-ro 0 1" \
  "LABEL=vm-oboot /boot ext4 defaults 0 2" \
  "LABEL=vm-recovery /var/recovery xfs defaults 0 2" > "$t/usr/etc/fstab"
# The SELinux policy store, in the commit's /var: a deploy refreshes the new deployment's policy
# with `semodule -N --rebuild-if-modules-changed` in bubblewrap, with the deployment's own /var
# bound (ostree's _ostree_sysroot_run_in_deployment), and Debian keeps the store in
# /var/lib/selinux (RHEL in /etc/selinux). The store holds recoveryd's module, as the policy of
# a commit with recoveryd layered on it does.
mkdir -p "$t/var/lib"
set_label "$t/var/lib" "$(label_of "$m/var/lib")"
rsync -aAXH --numeric-ids "$m/var/lib/selinux" "$t/var/lib/"
kver=$(ls "$t/usr/lib/modules" | sort -V | tail -1)
[ -s "$t/usr/lib/modules/$kver/vmlinuz" ] && [ -s "$t/usr/lib/modules/$kver/initramfs.img" ] \
  || { log "no kernel and initramfs in /usr/lib/modules/$kver (tests/vm/image.sh puts them there)"; exit 1; }

# The sysroot, the two commits, the first deployed.
s=$work/sysroot
mkdir -p "$s"
ostree admin init-fs "$s" >/dev/null
ostree admin os-init --sysroot="$s" vmos >/dev/null
repo=$s/ostree/repo
version() {
  sed -i "s/^VERSION_ID=.*/VERSION_ID=\"$1\"/" "$t/usr/lib/os-release"
  echo "$1" > "$t/usr/lib/vm-os-version"
  set_label "$t/usr/lib/vm-os-version" "$(label_of "$t/usr/lib/os-release")"
}
version 4.15.1
old=$(ostree --repo="$repo" commit -b vmos/stable --add-metadata-string=version=4.15.1 -s "vmos 4.15.1" --tree=dir="$t")
ostree --repo="$repo" refs --create=keep/4.15.1 "$old"
ostree admin deploy --sysroot="$s" --os=vmos --karg=root=LABEL=vm-oroot --karg=rw vmos/stable >/dev/null
version 4.16.0
new=$(ostree --repo="$repo" commit -b vmos/stable --add-metadata-string=version=4.16.0 -s "vmos 4.16.0" --tree=dir="$t")

# The stateroot's /var: the installed guest's (recoveryd's state, etcd's data, the fakes,
# the node's files), less what belongs to that guest's boots; /usr/local's content moves there.
v=$s/ostree/deploy/vmos/var
set_label "$v" "$(label_of "$m/var")"
rsync -aAXH --numeric-ids --exclude=/log/journal/ --exclude=/cache/apt/ --exclude=/tmp/ \
  --exclude=/lib/vm-test/ "$m/var/" "$v/"
mkdir -p "$v/usrlocal" "$v/roothome" "$v/home" "$v/mnt" "$v/srv"
rsync -aAXH --numeric-ids "$m/usr/local/" "$v/usrlocal/"
rsync -aAXH --numeric-ids "$m/opt/" "$v/opt/"
rsync -aAXH --numeric-ids "$m/root/" "$v/roothome/"
for d in home mnt srv; do set_label "$v/$d" "$(label_of "$m/$d" 2>/dev/null || label_of "$m/var")"; done

# /boot on its own file system: what ostree wrote there (kernel, initramfs, loader entries).
mkdir "$work/bootfs"
mv "$s/boot/"* "$s/boot/".[!.]* "$work/bootfs/" 2>/dev/null || true
find "$work/bootfs" -exec setfattr -h -n security.selinux -v "$(label_of "$m/boot")" {} +
set_label "$s/boot" "$(label_of "$m/boot")"
for d in "$s" "$s/ostree" "$s/ostree/deploy" "$s/ostree/deploy/vmos"; do
  [ -n "$(label_of "$d")" ] || set_label "$d" "$(label_of "$m")"
done
# What ostree made on a machine without SELinux has no label (the repository's metadata, the
# deployment's /etc, the boot directories): each gets the one the node's policy gives its path
# in the booted system, as a relabel of the node would.
python3 - "$s" "$(ls -d "$s"/ostree/deploy/vmos/deploy/*.0)" <<'PY' || { log "labelling the sysroot failed"; exit 1; }
import os, subprocess, sys
sysroot, deployment = sys.argv[1], sys.argv[2]
deploy_rel = os.path.relpath(deployment, sysroot)
var_rel = "ostree/deploy/vmos/var"
todo = []
for top, dirs, files in os.walk(sysroot):
    for name in dirs + files:
        path = os.path.join(top, name)
        try:
            os.getxattr(path, "security.selinux", follow_symlinks=False)
            continue
        except OSError:
            pass
        rel = os.path.relpath(path, sysroot)
        if rel == deploy_rel or rel.startswith(deploy_rel + "/"):
            guest = "/" + rel[len(deploy_rel):].lstrip("/")
        elif rel == var_rel or rel.startswith(var_rel + "/"):
            guest = "/var/" + rel[len(var_rel):].lstrip("/")
        else:
            guest = "/sysroot/" + rel
        todo.append((path, guest))
for i in range(0, len(todo), 400):
    batch = todo[i:i + 400]
    out = subprocess.run(["chroot", deployment, "matchpathcon", "-n"] + [g for _, g in batch],
                         check=True, capture_output=True, text=True).stdout.split("\n")
    for (path, _), label in zip(batch, out):
        os.setxattr(path, "security.selinux", label.strip().encode() + b"\0", follow_symlinks=False)
print(f"labelled {len(todo)} entries", file=sys.stderr)
PY
mkdir -p "$out"
rm -f "$out/root.img" "$out/boot.img"
truncate -s 6G "$out/root.img"
mkfs.ext4 -q -L vm-oroot -d "$s" "$out/root.img" >&2
truncate -s 512M "$out/boot.img"
mkfs.ext4 -q -L vm-oboot -d "$work/bootfs" "$out/boot.img" >&2
printf '%s\n' "$old" > "$out/old"
printf '%s\n' "$new" > "$out/new"
log "sysroot: vmos 4.15.1 ($old) deployed, 4.16.0 ($new) on vmos/stable"
