#!/usr/bin/env bash
# The GPU checks of README "Fitting on a GPU workstation or a cluster node", in one call on a GPU machine
# without the desktop stack: the `gpu` tests, then benchmarks/gpu.py. Needs the scenes that
# `python -m benchmarks.gpu --prepare --work WORK` made on the desktop (default WORK: out/bench_gpu), and
# the wheels of requirements-node.txt the machine lacks, either installed or carried in .whl/.
# Logs and the benchmark's JSON go to $OUT (default out/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-out/bench_gpu}
OUT=${OUT:-out/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 AVATAR_GPU_SCENES="$WORK"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
nvidia-smi -L | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -rs tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}
python3 -m benchmarks.gpu --work "$WORK" --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu_bench.log"
bench=${PIPESTATUS[0]}
echo "gpu tests exit $tests, benchmark exit $bench"
exit $(( tests || bench ))
