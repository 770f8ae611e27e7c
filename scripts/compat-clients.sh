#!/usr/bin/env bash
# Installs the SSE clients that the compatibility suite (tests/compat.rs) drives, pinned:
# npm packages from tests/compat/package-lock.json, PyPI packages from
# tests/compat/requirements.txt, into target/compat-clients/ (never committed). Installs
# node, npm, python3-venv and chromium with apt where they are missing. Idempotent: a second
# run with unchanged pins does nothing. `bash scripts/test.sh` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST="${TOWER_SSE_COMPAT_CLIENTS:-target/compat-clients}"
mkdir -p "$DEST"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
  if [ -z "$APT_UPDATED" ]; then
    $SUDO apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium (tests/browser.rs, tests/compat.rs)"
  apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "==> installing node and npm (tests/compat.rs)"
  apt_install nodejs npm
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  echo "==> installing python3-venv (tests/compat.rs)"
  apt_install python3 python3-venv
fi

# npm: exactly the lock file's versions.
NODE_DIR="$DEST/node"
mkdir -p "$NODE_DIR"
# The marker is written last, so an interrupted install is redone.
if ! cmp -s tests/compat/package-lock.json "$NODE_DIR/installed-lock.json"; then
  echo "==> npm ci (tests/compat/package-lock.json)"
  rm -f "$NODE_DIR/installed-lock.json"
  cp tests/compat/package.json tests/compat/package-lock.json "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  cp tests/compat/package-lock.json "$NODE_DIR/installed-lock.json"
fi

# PyPI: every package pinned, in a virtual environment of its own.
VENV="$DEST/venv"
if ! cmp -s tests/compat/requirements.txt "$VENV/requirements.txt"; then
  echo "==> pip install -r tests/compat/requirements.txt"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tests/compat/requirements.txt
  cp tests/compat/requirements.txt "$VENV/requirements.txt"
fi

echo "==> compat clients ready in $DEST"
