#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, integration, real systemd).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  tests/setup-host.sh
fi
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo test
