#!/usr/bin/env bash
# Download, here (with network), the wheels that benchmarks/gpu/run.sh installs on a GPU
# machine without network. The GPU image has Python 3.12 with JAX (CUDA), CuPy, numpy,
# scipy, click, rich, tqdm, pyyaml, attrs; gpufit needs pyhf, iminuit and flatbuffers on top, and the
# gpu-marked tests need pytest (there) and nothing else.
#
#     bash benchmarks/gpu/fetch-wheels.sh [DIR]      # default: .whl (ignored by git)
set -euo pipefail
dest=${1:-.whl}
python=${PYTHON:-python3}
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" \
  pyhf==0.7.6 iminuit==2.33.0 flatbuffers jsonpatch jsonpointer jsonschema jsonschema-specifications referencing rpds-py
ls -1 "$dest"
