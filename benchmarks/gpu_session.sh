#!/usr/bin/env bash
# One prepared script for a lent GPU (15 minutes of device time in all): the checks and
# measurements every open GPU item needs, most important first, each under its own time limit,
# results under $OUT. Run it from the repository root on the device machine:
#
#   ../shared/device/fetch-wheels.sh transformers tokenizers safetensors huggingface-hub  # here, once
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# Then copy $OUT/* into benchmarks/results/ (named <date>-<card>), and data/costmodel/ for records.
set -uo pipefail
OUT=${OUT:-/tmp/tw_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
unset TRITON_INTERPRET TILEWRIGHT_INTERPRET
export TILEWRIGHT_CACHE_DIR=$OUT/cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" > "$OUT/versions.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? seconds=$(( $(date +%s) - start ))" | tee -a "$OUT/steps.txt"
}

# 1. the image's torch/Triton versions: op tests (interpreter, as in CI) and the sm_90 compile check
step compat_tests 100 python3 -m pytest -q -p no:cacheprovider tests/core/test_ops.py tests/core/test_gpu_compile.py
# 2. the benchmark suite on the GPU: correctness of every kernel in fp16/bf16/fp32 first, then eager / Inductor / vendor baselines
step gpu_suite 200 python3 -m benchmarks.gpu_suite --out "$OUT/suite" --budget-s 190
# 3. fused attention vs SDPA-flash and FlexAttention (quick grid)
step attention_bench 80 python3 benchmarks/attention_bench.py --out "$OUT/attention" --quick
# 4. convolutions vs cuDNN and max-autotune (representative shapes)
step conv_bench 70 python3 benchmarks/conv_bench.py --out "$OUT/conv_bench.json" --quick
# 5. measured records for the cost model (the rest of the window)
mkdir -p "$OUT/costmodel"
step collect 100 python3 -m tilewright.cli collect --budget-s 90 --out "$OUT/costmodel/records.jsonl" --json
ls -R "$OUT" | head -50
