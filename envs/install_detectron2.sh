#!/usr/bin/env bash
# Install detectron2's Python code into the environment of PYTHON (no compiled _C).
#
# There is no official detectron2 release on PyPI. sal-detectron2 0.7.2 is a wheel
# of upstream detectron2's Python code plus a _C built for CPython 3.10; its tag
# keeps pip from installing it elsewhere. We download it for 3.10, check its
# hash, drop _C (standard Mask R-CNN does not need it) and the stray top-level
# `tools` package, retag it py3-none-any and drop its metadata's dependencies
# (they pin numpy<2, black, tensorboard), so pip neither installs them nor
# reports them missing. What detectron2 imports is pinned in requirements.txt. Idempotent: a working install of this version is
# left alone. On clusters with a CUDA toolkit, a source build (with _C) replaces
# this step: pip install 'git+https://github.com/facebookresearch/detectron2.git'
#
# usage: envs/install_detectron2.sh PYTHON
set -euo pipefail

PY=${1:?usage: $0 PYTHON}
VERSION=0.7.2
SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
CHECK="import importlib.metadata as m, detectron2.model_zoo, detectron2.engine, detectron2.evaluation
assert m.version('sal-detectron2') == '$VERSION', m.version('sal-detectron2')"

if "$PY" -W ignore -c "$CHECK" 2>/dev/null; then
    echo "detectron2 (sal-detectron2 $VERSION) already installed"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
    --platform manylinux2014_x86_64 --platform linux_x86_64 -d "$work/download" "sal-detectron2==$VERSION"
wheel="$work/download/sal_detectron2-$VERSION-cp310-none-any.whl"
echo "$SHA256  $wheel" | sha256sum --check --quiet -

"$PY" -m wheel unpack "$wheel" -d "$work/unpacked"
root="$work/unpacked/sal_detectron2-$VERSION"
info="$root/sal_detectron2-$VERSION.dist-info"
rm -rf "$root"/detectron2/_C*.so "$root/tools"
sed -i -e '/^detectron2\/_C.*\.so,/d' -e '/^tools\//d' "$info/RECORD"
sed -i -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' -e 's/^Tag: .*/Tag: py3-none-any/' "$info/WHEEL"
sed -i '/^Requires-Dist:/d' "$info/METADATA"
mkdir "$work/wheel"
"$PY" -m wheel pack "$root" -d "$work/wheel"

"$PY" -m pip install --quiet --no-deps --force-reinstall "$work/wheel/sal_detectron2-$VERSION-py3-none-any.whl"
"$PY" -W ignore -c "$CHECK"
echo "installed detectron2 (sal-detectron2 $VERSION, Python code only)"
