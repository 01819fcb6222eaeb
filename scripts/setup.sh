#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine, idempotently:
# the Debian packages (Python with venv, real registries and clients for the sandbox and the
# tests) and a Python virtual environment in .venv with the project and its test extras.
# The environment is verified on every run (pip check, the top-level packages import), not
# trusted from a stamp: when the check fails, the project is installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv docker-registry skopeo podman postgresql git)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  echo "setup: creating .venv" >&2
  rm -rf .venv
  "$PY" -m venv .venv
fi

# The installed environment works: no broken or missing requirement, the `warmer` script
# is there, and every module of the top-level packages imports (a dependency missing from
# the environment fails here, whatever the stamp says).
IMPORT_ALL='
import importlib, pkgutil, sys
for top in ("warmer", "analytics", "jobs"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
'
verify() {
  .venv/bin/python -m pip check >/dev/null 2>&1 &&
    .venv/bin/python -c "$IMPORT_ALL" >/dev/null 2>&1 &&
    [ -x .venv/bin/warmer ]
}

install() {
  echo "setup: installing the project into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch .venv/.installed
}

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! verify; then
  install
  if ! verify; then
    echo "setup: the environment in .venv does not verify after install:" >&2
    .venv/bin/python -m pip check >&2 || true
    .venv/bin/python -c "$IMPORT_ALL" >&2 || true
    exit 1
  fi
fi
