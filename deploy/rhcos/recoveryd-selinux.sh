#!/bin/sh
# Load recoveryd's SELinux policy module (the recoveryd-selinux package's, compiled from
# selinux/) when it differs from the one this script loaded last, then label recoveryd's paths.
# Run at boot by recoveryd-selinux.service on RHCOS nodes that do not layer the RPM, before
# systemd creates recoveryd's socket (which takes its label when it is made).
set -eu
prefix=${RECOVERYD_INSTALL_PREFIX:-}
pp=$prefix/usr/local/share/recoveryd/recoveryd.pp.bz2
stamp=$prefix/var/lib/recoveryd-selinux/loaded.sha256
say() { echo "recoveryd-selinux: $*" >&2; }

sum=$(sha256sum "$pp" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ] || ! semodule -l | grep -qx recoveryd; then
  # Priority 200, as the package's %selinux_modules_install gives it.
  semodule -X 200 -i "$pp"
  mkdir -p "${stamp%/*}"
  printf '%s\n' "$sum" > "$stamp.tmp"
  mv -f "$stamp.tmp" "$stamp"
  say "loaded the recoveryd module ($sum)"
  # Everything the module labels, once per new module (a store can hold many files).
  for p in /usr/local/bin/recoveryd /usr/local/bin/recoveryctl /etc/recoveryd /var/recovery /run/recoveryd; do
    if [ -e "$prefix$p" ]; then restorecon -R "$prefix$p"; fi
  done
fi
