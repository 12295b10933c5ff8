#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, integration, private D-Bus, real
# ostree, packaging, and real systemd in systemd-nspawn).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  tests/setup-host.sh
fi
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# The packaging and end-to-end tests use the release binaries, as the RPM ships them.
cargo build --release --bins --example fake-rpm-ostreed
cargo test
