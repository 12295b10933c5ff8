#!/usr/bin/env bash
# The main job, as a demo you can follow: on a throwaway node (Debian 12 with systemd, booted in
# systemd-nspawn), take a backup, break the node with a failed upgrade, recover it through the
# daemon, watch it reboot and resume by itself, and check the result.
# Run as root on Debian 12. Sets up what is missing first (packages, release build).
set -euo pipefail
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: run as root (it boots a container)" >&2
  exit 1
fi
tests/setup-host.sh
echo "==> Building recoveryd (release) and the fake rpm-ostree daemon the demo node uses" >&2
cargo build --release --bins --example fake-rpm-ostreed
exec tests/e2e/harness.sh --narrate cycle
