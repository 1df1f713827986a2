#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install lolaray with
# its test tools. Idempotent: a second run only re-checks the installed requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pyproject's torch range (>=2.5,<2.14) resolves to the CPU build on this machine's disk;
# on a GPU cluster pip picks the CUDA build from PyPI.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
