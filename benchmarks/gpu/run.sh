#!/usr/bin/env bash
# The GPU check, in one command for the device tool (an H100/H200 with JAX, CuPy, numpy,
# scipy and pytest, no network). Run from the repository root, with the wheels that
# benchmarks/gpu/fetch-wheels.sh downloaded carried in .whl:
#
#     bash benchmarks/gpu/run.sh [quick|full|parity|engine|parts|scan|solver]
#
# It installs the wheels, then runs `gpufit info`, the tests marked gpu (CPU/GPU parity)
# and benchmarks/toys.py on the GPU, each step under its own time limit so that the whole
# run ends inside one call (quick: ~4 min, engine: ~5 min, scan: ~3.5 min, solver: ~7 min,
# full: at most 8 min). Results land in $OUT (the device tool's folder that comes back),
# or benchmarks/results where OUT is unset; a log in $OUT.
set -uo pipefail
mode=${1:-full}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "installing the carried wheels failed (run benchmarks/gpu/fetch-wheels.sh first)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src
started=$SECONDS

step() {  # step SECONDS NAME COMMAND...: run with a limit, log it, never stop the script
  local limit=$1 name=$2
  shift 2
  echo "=== $name (limit ${limit}s, at ${SECONDS}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$out/gpu-run.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started))s"
}

echo "command: bash benchmarks/gpu/run.sh $mode" | tee "$out/gpu-run.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$out/gpu-run.log"
if [ "$mode" = parity ]; then  # where CPU and GPU part ways (saves the differing toys), then 1Lbb
  step 150 "parity" python3 benchmarks/gpu/parity.py --models sbottom,1lbb --out "$out"
  step 100 "toys float64 1lbb" python3 benchmarks/toys.py --pyhf-toys 0 --models 1lbb --ntoys 10000 \
    --out "$out/toys-gpu-float64-1lbb.json"
  echo "done in $((SECONDS - started))s"
  exit 0
fi
toys() {  # toys SECONDS DTYPE MODELS NTOYS
  step "$1" "toys $2 $3 $4" python3 benchmarks/toys.py --pyhf-toys 0 --dtype "$2" --models "$3" --ntoys "$4" \
    --out "$out/toys-gpu-$2-${3//,/-}.json"
}
if [ "$mode" = parts ]; then  # where a solver step's time goes, against the batch width, two solves: ~4 min
  step 420 "step parts" python3 benchmarks/step_parts.py --models gen40,sbottom,1lbb --batches 1024,32768 \
    --solves lapack,unrolled --out "$out/step-parts-gpu.json"
  echo "done in $((SECONDS - started))s"
  exit 0
fi
if [ "$mode" = solver ]; then  # 1Lbb: Gauss-Newton against Newton end games, one wide lockstep group: ~7 min
  step 400 "solver" python3 benchmarks/solver.py --models 1lbb --toys 8192 --group 0 --out "$out/solver-gpu.json"
  echo "done in $((SECONDS - started))s"
  exit 0
fi
if [ "$mode" = scan ]; then  # the 1Lbb grid twice, its models built by the CPU's cores; float32 toys: ~3.5 min
  step 110 "scan 1lbb" python3 benchmarks/scan.py --pyhf-points 0 --repeat 2 --out "$out/scan-gpu.json"
  step 90 "toys float32 sbottom 1000" python3 benchmarks/toys.py --pyhf-toys 0 --dtype float32 --models sbottom \
    --ntoys 1000 --out "$out/toys-gpu-float32-sbottom.json"
  echo "done in $((SECONDS - started))s"
  exit 0
fi
if [ "$mode" = engine ]; then  # the toy engine alone, in a short call (no info, no tests): ~5 min
  toys 170 float64 sbottom,gen40 10000,100000
  toys 150 float64 1lbb 10000
  echo "done in $((SECONDS - started))s"
  exit 0
fi
step 60 "gpufit info" python3 -m gpufit info --require-gpu --output-file "$out/info-gpu.json"
# the image has no pytest-xdist: the project's addopts (-n auto) are replaced
step 200 "gpu tests" python3 -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider -o addopts="-ra"

if [ "$mode" = quick ]; then
  toys 90 float64 gen40,sbottom 10000
  toys 60 float64 1lbb 10000
  toys 45 float32 sbottom 10000
else
  # the 125 points of the 1Lbb grid, once (compiling); its rows to compare with the CPU's
  step 100 "scan 1lbb" python3 benchmarks/scan.py --pyhf-points 0 --rows "$out/scan-rows" --out "$out/scan-gpu.json"
  rm -f "$out/scan-rows/scan.csv"  # the device tool brings 8 files back; the JSON has the rows
  toys 75 float64 1lbb 10000  # 2.6 s warm on an H200, 38 s compiling
  # gen40 and sbottom at 100,000 toys: the engine mode; float32 toys: the scan mode
fi
echo "done in $((SECONDS - started))s"
