#!/usr/bin/env bash
# Build the recoveryd binary RPMs from already built binaries ("prebuilt" mode of
# rpm/recoveryd.spec), on any machine with rpmbuild, e.g. Debian 12 with the packages
#   rpm rpmlint selinux-policy-dev checkpolicy semodule-utils cpio
#
#   rpm/build.sh [OUTDIR]          # default OUTDIR: target/rpm
#
# 1. compiles the SELinux module (selinux/recoveryd.{te,if,fc}) with the reference policy's
#    development Makefile into selinux/recoveryd.pp (ignored by git);
# 2. runs rpmbuild -bb in prebuilt mode with the binaries of $RECOVERYD_BIN_DIR (default: the
#    static release build, deploy/build-static.sh, run when the variable is not set);
# 3. prints the paths of the built RPMs, one a line, on stdout (everything else goes to
#    stderr).
#
# On Fedora, build from source instead: see the top of rpm/recoveryd.spec.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=${1:-$root/target/rpm}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
bindir=${RECOVERYD_BIN_DIR:-}
spec=$root/rpm/recoveryd.spec
devel_makefile=/usr/share/selinux/devel/Makefile

log() { printf 'rpm/build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

command -v rpmbuild >/dev/null || die "rpmbuild is missing (Debian: apt-get install rpm)"
[ -f "$devel_makefile" ] || die "$devel_makefile is missing (Debian: apt-get install selinux-policy-dev)"

# The spec's Version must be the crate's.
crate_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
spec_version=$(sed -n 's/^Version: *//p' "$spec" | head -n1)
[ "$crate_version" = "$spec_version" ] ||
    die "Version in rpm/recoveryd.spec ($spec_version) differs from Cargo.toml ($crate_version)"

# 1. The binaries.
if [ -n "${RECOVERYD_BIN_DIR:-}" ]; then
    [ -x "$bindir/recoveryd" ] && [ -x "$bindir/recoveryctl" ] ||
        die "no recoveryd/recoveryctl in RECOVERYD_BIN_DIR=$bindir"
else
    # Always asked of cargo (a no-op when current), so that a stale build is never packaged.
    log "building the static release binaries (deploy/build-static.sh)"
    bindir=$("$root/deploy/build-static.sh")
fi
bindir=$(cd "$bindir" && pwd)

# 2. The SELinux module, compiled in a scratch copy so that the Makefile's tmp/ stays out of
#    the source tree; the .pp is then put where the spec's prebuilt mode takes it from.
work=$(mktemp -d "${TMPDIR:-/tmp}/recoveryd-rpm.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/selinux"
cp "$root"/selinux/recoveryd.te "$root"/selinux/recoveryd.if "$root"/selinux/recoveryd.fc "$work/selinux/"
log "compiling the SELinux module"
make -s -C "$work/selinux" -f "$devel_makefile" recoveryd.pp >&2
cp "$work/selinux/recoveryd.pp" "$root/selinux/recoveryd.pp"

# 3. The RPMs.
log "building the RPMs from $bindir"
rpmbuild -bb \
    --define "_topdir $work/rpmbuild" \
    --define "_sourcedir $root" \
    --define "_rpmdir $outdir" \
    --define "prebuilt_dir $bindir" \
    "$spec" >"$work/rpmbuild.log" 2>&1 || {
    cat "$work/rpmbuild.log" >&2
    die "rpmbuild failed"
}
written=$(sed -n 's/^Wrote: //p' "$work/rpmbuild.log")
[ -n "$written" ] || { cat "$work/rpmbuild.log" >&2; die "rpmbuild wrote no package"; }
printf '%s\n' "$written"
