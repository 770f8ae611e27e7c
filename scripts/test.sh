#!/usr/bin/env bash
# The whole test suite, as CI runs it: `bash scripts/test.sh`.
# Installs what the tests need on a fresh machine: headless Chromium for the browser test,
# and the pinned SSE clients of the compatibility suite (scripts/compat-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

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
