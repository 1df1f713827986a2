#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install lolaray with
# its test tools. Idempotent: a second run only re-checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pyproject's torch range (>=2.5,<2.14) resolves to the CPU build on this machine's disk;
# on a GPU cluster pip picks the CUDA build from PyPI.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"

# The HTML-report test opens reports in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1 && [ -z "${LOLARAY_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing chromium (Debian package) for the report tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "[setup] note: chromium is missing; the report tests need it (apt-get install -y chromium)" >&2
  fi
fi
