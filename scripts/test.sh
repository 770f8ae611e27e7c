#!/usr/bin/env bash
# The whole test suite, as CI runs it: `bash scripts/test.sh`.
# Installs what the tests need on a fresh machine: redis-server and redis-cli for the
# backplane tests, headless Chromium for the browser test, and the pinned SSE clients of the
# compatibility suite (scripts/compat-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# The backplane tests (tests/backplane*.rs) start their own servers on free loopback ports,
# so a Redis the package may start on 6379 is not used. Debian's package brings redis-cli.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "==> installing redis-server (tests/backplane.rs, tests/backplane_demo.rs)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

bash scripts/compat-clients.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings

echo "==> cargo build --no-default-features (the documented minimal build)"
cargo build --no-default-features --quiet

echo "==> cargo test --all-features"
cargo test --all-features

echo "==> cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features --quiet

echo "==> all checks passed"
