#!/usr/bin/env bash
# One prepared GPU run for the Triton selective scan (issues 10, 20, 29). First table (issue 29): the 2D scan,
# cuda-marked tests of tests/test_triton_scan2d.py, then benchmarks/scan2d.py --device cuda (2D vs 1D fwd+bwd at
# 10k, 50k, 100k instances, and the triton 2D scan's error against float64). Then cuda-marked tests (triton vs float64
# at L = 1 to 16k and 400k, forward, last state and every gradient; triton vs mamba-ssm), then the scan and the
# aggregator benchmarks, each under its own time limit so that what finished is kept. Results go to $OUT
# (default benchmarks/out/gpu). On the GPU machine, from the project root, with ../shared/device/prepare.sh
# run beforehand on the workstation (it makes .device/):
#     source .device/gpu_env.sh; bash benchmarks/gpu_check.sh            # ~2.5 min kernel build + ~5 min
# Steps can be chosen: GPU_CHECK_STEPS="selfcheck tests scan agg" (default: those four, in that order). selfcheck
# (issue 28) runs first: `mambamil doctor` (devices, backends, the Triton self-check on the GPU, fp32 and bf16) and
# benchmarks/selfcheck.py (the check's cost, first and warm, against its float64 reference alone). The features
# stage (issue 11) is a fourth step, best run as a second call since one call may last at most 10 minutes:
#     WITH_IMAGECODECS=1 ../shared/device/prepare.sh   # on the workstation: the demo slides need imagecodecs
#     source .device/gpu_env.sh --no-mamba; GPU_CHECK_STEPS=features bash benchmarks/gpu_check.sh
# Encoder presets (issue 18): patches/s of uni_v1, uni_v2 and virchow2 alone and end to end (random weights at
# full size; bf16, SDPA, channels-last; ENCODERS_COMPILE=1 adds torch.compile), needs imagecodecs as above:
#     source .device/gpu_env.sh --no-mamba; GPU_CHECK_STEPS=encoders bash benchmarks/gpu_check.sh
# Stain normalisation (issue 27): patches/s without it, with torchstain Macenko and with Reinhard on the device
# (resnet50_trunc on CMU-1-Small-Region, 50 % overlap), and the stain tests on CUDA (torchstain's torch backend
# keeps Reinhard's colour-space matrices on the CPU: this step shows whether it runs on CUDA at all):
#     source .device/gpu_env.sh --no-mamba; GPU_CHECK_STEPS=stain bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
STEPS=${GPU_CHECK_STEPS:-selfcheck scan2d tests scan agg}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  "$PY" -c "from mambamil.ops import available_backends as a; print('scan backends:', a())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
for step in $STEPS; do
  t0=$(date +%s)
  case $step in
    selfcheck) { timeout 150 "$PY" -m mambamil doctor; timeout 150 "$PY" benchmarks/selfcheck.py --device cuda; } \
                 > "$OUT/selfcheck.txt" 2>&1 ;;
    scan2d) timeout 60 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_triton_scan2d.py \
              > "$OUT/scan2d.txt" 2>&1
            timeout 150 "$PY" benchmarks/scan2d.py --device cuda >> "$OUT/scan2d.txt" 2>&1 ;;
    tests) timeout 170 "$PY" -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_triton_scan.py tests/test_scan.py \
             tests/test_scan_selfcheck.py \
             tests/test_models.py > "$OUT/tests.txt" 2>&1
           timeout 60 "$PY" -m pytest -q -p no:cacheprovider \
             tests/test_triton_scan.py::test_available_backends_does_not_initialise_cuda >> "$OUT/tests.txt" 2>&1 ;;
    scan) timeout 200 "$PY" benchmarks/scan.py --device cuda > "$OUT/scan.txt" 2>&1 ;;
    agg) timeout 170 "$PY" benchmarks/aggregator.py --device cuda > "$OUT/aggregator.txt" 2>&1 ;;
    features) timeout 420 "$PY" benchmarks/features.py --device cuda --precision bf16 --batch-size 256 \
                --num-workers 15 --large-size 17216 12912 --n-small 12 --small-size 4608 3584 --check 256 \
                --profile > "$OUT/features.txt" 2>&1 ;;
    encoders) timeout 480 "$PY" benchmarks/features.py --device cuda --precision bf16 --batch-size 256 \
                --num-workers 15 --large-size 17216 12912 --seconds 10 --presets uni_v1 uni_v2 virchow2 \
                ${ENCODERS_COMPILE:+--compile} > "$OUT/encoders.txt" 2>&1 ;;
    stain) timeout 300 "$PY" benchmarks/features.py --device cuda --precision bf16 --batch-size 256 \
                --num-workers 15 --stain > "$OUT/stain.txt" 2>&1 ;;
    *) echo "gpu_check: unknown step $step"; continue ;;
  esac
  rc=$?
  echo "gpu_check: $step rc=$rc in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"
done
cat "$OUT/selfcheck.txt" 2>/dev/null
tail -n 5 "$OUT/tests.txt" 2>/dev/null
tail -n 30 "$OUT/scan2d.txt" "$OUT/scan.txt" "$OUT/aggregator.txt" "$OUT/features.txt" "$OUT/encoders.txt" "$OUT/stain.txt" 2>/dev/null
