#!/usr/bin/env bash
# Builds Label Studio's own virtual environment (default .venv-label-studio) from
# envs/label-studio-requirements.txt: the annotation server that `labelfactory annotate`
# talks to over HTTP, and that tests/test_label_studio.py starts. Its pins (Django, numpy 2.2)
# clash with the project's, so it never joins .venv. `make setup` runs this.
#
# usage: envs/install_label_studio.sh [PYTHON] [VENV]   (defaults: python3, .venv-label-studio)
set -euo pipefail

PY=${1:-python3}
VENV=${2:-.venv-label-studio}
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r envs/label-studio-requirements.txt
"$VENV/bin/python" -c "import label_studio, label_studio_sdk.converter.brush"
