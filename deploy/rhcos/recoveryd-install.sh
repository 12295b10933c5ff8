#!/bin/sh
# Install recoveryd's static binaries into /usr/local/bin from the image named, by digest, in
# /etc/recoveryd/binaries-image (deploy/image/Containerfile, stage "binaries"), once per image.
# Run at boot by recoveryd-install.service on RHCOS nodes that do not layer the RPM
# (the RHCOS MachineConfig (deploy/rhcos/generate-machineconfig.py)). An image that cannot be fetched while binaries are already
# installed is a warning, not a failure: a node recovering after a failed upgrade may have no
# registry, and the binaries it has are the ones that started the recovery.
set -eu
prefix=${RECOVERYD_INSTALL_PREFIX:-}
bin=$prefix/usr/local/bin
stamp=$prefix/usr/local/lib/recoveryd/installed-image
image=$(cat "$prefix/etc/recoveryd/binaries-image")
say() { echo "recoveryd-install: $*" >&2; }
have_binaries() { [ -x "$bin/recoveryd" ] && [ -x "$bin/recoveryctl" ]; }

case "$image" in
  *@sha256:????????????????????????????????????????????????????????????????) ;;
  *) say "$image is not pinned by digest (name@sha256:<64 hex>); nothing installed"; exit 1 ;;
esac
if [ "$(cat "$stamp" 2>/dev/null)" = "$image" ] && have_binaries; then
  exit 0
fi
if ! podman image exists "$image"; then
  # The node's pull secret, as the kubelet uses it.
  auth=
  [ -f /var/lib/kubelet/config.json ] && auth="--authfile /var/lib/kubelet/config.json"
  # shellcheck disable=SC2086
  if ! podman pull --quiet $auth "$image" >/dev/null; then
    if have_binaries; then
      say "cannot pull $image; keeping the installed binaries ($("$bin/recoveryctl" --version))"
      exit 0
    fi
    say "cannot pull $image, and no recoveryd is installed"
    exit 1
  fi
fi
c=$(podman create --quiet "$image" /usr/bin/recoveryd)
tmp=
cleanup() {
  podman rm --force "$c" >/dev/null 2>&1 || :
  if [ -n "$tmp" ]; then rm -rf "$tmp"; fi
}
trap cleanup EXIT
mkdir -p "$bin" "${stamp%/*}"
# Copied beside their final place and renamed over it: a running recoveryd keeps its file,
# and no half-written binary is ever under its name.
tmp=$(mktemp -d "$bin/.recoveryd-install.XXXXXX")
for b in recoveryd recoveryctl; do
  podman cp "$c:/usr/bin/$b" "$tmp/$b"
  chmod 0755 "$tmp/$b"
done
"$tmp/recoveryctl" --version >/dev/null || { say "the image's recoveryctl does not run here"; exit 1; }
for b in recoveryd recoveryctl; do
  mv -f "$tmp/$b" "$bin/$b"
done
if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then
  restorecon "$bin/recoveryd" "$bin/recoveryctl"
fi
printf '%s\n' "$image" > "$stamp.tmp"
mv -f "$stamp.tmp" "$stamp"
say "installed $("$bin/recoveryctl" --version) from $image"
