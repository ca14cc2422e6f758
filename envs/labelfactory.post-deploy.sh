#!/usr/bin/env bash
# Installs labelfactory and its pins into an environment, from the repository root:
#   - by make setup (into .venv),
#   - by Snakemake after it creates envs/labelfactory.yaml for a rule under --sdm conda
#     (its post-deploy hook; Snakemake copies env files away, so a pip "-r" inside the YAML
#     could not find requirements.txt),
#   - by hand after `conda env create -f envs/labelfactory.yaml`.
# Snakemake rebuilds a rule's environment when this file changes, so it carries the digests of
# what it installs (tests/test_envs.py keeps them current):
#   requirements.txt sha256 e0a2a1616e9146a784932ea5e7de1030e20994bc93958b52c243ca9842d250d3
#   envs/install_detectron2.sh sha256 ed2ded45ce8caa207b123624480c1ad8c82653ae280fb275ddb5fa2df959b3f8
# A torch build for another CUDA comes from PIP_EXTRA_INDEX_URL (make TORCH_INDEX_URL=... sets it).
#
# usage: envs/labelfactory.post-deploy.sh [PYTHON]   (default: the environment's python)
set -euo pipefail

PY=${1:-python}
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet -r requirements.txt
bash envs/install_detectron2.sh "$PY"
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
