#!/usr/bin/env bash
# The whole test suite, as CI runs it: `bash scripts/test.sh`.
# Installs what the tests need on a fresh machine: redis-server and redis-cli for the
# backplane tests, make and a C compiler for jemalloc (the demo's allocator), headless
# Chromium for the browser test, and the pinned SSE clients of the compatibility suite
# (scripts/compat-clients.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# A cold build (CI's fresh clone) gains nothing from incremental artifacts, and full debug
# info makes every test binary slower to link; line tables keep backtraces readable.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
# The backplane tests (tests/backplane*.rs) start their own servers on free loopback ports,
# so a Redis the package may start on 6379 is not used. Debian's package brings redis-cli.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "==> installing redis-server (tests/backplane.rs, tests/backplane_demo.rs)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

# The demo's allocator (tikv-jemallocator, a dev-dependency) builds jemalloc from source with
# make and a C compiler.
if ! command -v make >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
  echo "==> installing make and gcc (jemalloc, the demo's allocator)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq make gcc >/dev/null
fi

# Installs, where missing, chromium (tests/browser.rs, tests/compat.rs,
# tests/backplane_demo.rs), node and npm, python3-venv, and the pinned npm/PyPI clients.
bash scripts/compat-clients.sh
# What the tests start must be here now: fail with a clear message rather than mid-suite.
if [ ! -x /usr/bin/chromium ] && [ ! -x /usr/bin/chromium-browser ]; then
  echo "error: chromium is still missing after the installs above" >&2
  exit 1
fi
for tool in node npm python3 redis-server redis-cli make cc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool is still missing after the installs above" >&2
    exit 1
  fi
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy (the crate, then the loadtest member)"
cargo clippy --all-targets --all-features -- -D warnings
# Default features only: `--all-features` would build both optional C allocators of the load
# server (jemalloc, mimalloc) for nothing. The other dependencies are already checked.
cargo clippy -p loadtest --all-targets -- -D warnings

echo "==> cargo build: with no feature, then with each feature alone"
cargo build --no-default-features --quiet
# Every feature declared in Cargo.toml, read from cargo itself so a new feature is covered.
features=$(cargo metadata --no-deps --format-version 1 \
  | python3 -c 'import json, sys; p = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "tower-sse"][0]; print(" ".join(f for f in p["features"] if f != "default"))')
for feature in $features; do
  echo "    --features $feature"
  cargo build --no-default-features --features "$feature" --quiet
done

echo "==> cargo test --all-features"
cargo test --all-features

echo "==> loom model checks (the manager's park/wake handshake, the context's fence pair)"
# Its own target directory: the cfg changes every crate's build.
RUSTFLAGS="--cfg tower_sse_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p tower-sse-loom --quiet

echo "==> cargo doc"
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --all-features --quiet

echo "==> all checks passed"
