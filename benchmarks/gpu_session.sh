#!/usr/bin/env bash
# The one prepared script for a lent GPU (H100/H200; 15 minutes of device time in all, start-up
# included): every GPU check and measurement of issue #16 in one report, each step under its own
# time limit, at most 8 minutes together (worst case: the sum of the limits below, 480 s).
#
# Here, once (the image lacks optuna and its needs, and cmaes; it has transformers 5.x, torch 2.11,
# Triton 3.6 -- /work/.library/device/KINDS.md):
#   ../shared/device/fetch-wheels.sh cmaes        # optuna alembic sqlalchemy colorlog mako cmaes -> .whl
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
#
# What comes back ($OUT holds three files: at most 8 return, two folders deep):
#   steps.txt        one line per step: name rc seconds limit
#   summary.json     versions, GPU, every step's rc/seconds and the JSON each step wrote
#   session.tar.gz   every step's log and JSON (results/, logs/)
# Then unpack session.tar.gz into benchmarks/results/<date>-<card>/ and commit it with the table.
#
# Without a usable CUDA device the preflight step fails within seconds and the script stops
# (exit 2) after writing steps.txt and summary.json: nothing hangs.
set -uo pipefail
OUT=${OUT:-/tmp/tw_out}
WORK=${TW_SESSION_DIR:-$(mktemp -d /tmp/tw_session.XXXXXX)}
mkdir -p "$OUT" "$WORK/logs" "$WORK/results"
: > "$OUT/steps.txt"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$WORK/logs/wheels.log" 2>&1 || echo "wheel install failed: see logs/wheels.log" >&2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
unset TRITON_INTERPRET TILEWRIGHT_INTERPRET
export PYTHONUNBUFFERED=1 TILEWRIGHT_CACHE_DIR=$WORK/cache

step() {  # step NAME SECONDS COMMAND...: run under a time limit, log to logs/NAME.log, record rc and seconds
  local name=$1 limit=$2; shift 2
  local start rc
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - start )) limit=$limit" | tee -a "$OUT/steps.txt"
  return $rc
}

finish() {  # combine steps.txt and the steps' JSON into summary.json; pack logs and results
  python3 - "$OUT" "$WORK" <<'PY' || echo '{"error": "summary failed"}' > "$OUT/summary.json"
import json, pathlib, sys
out, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
steps = []
for line in (out / "steps.txt").read_text().splitlines():
    name, *fields = line.split()
    steps.append({"step": name, **{k: int(v) for k, v in (f.split("=") for f in fields)}})
results = {}
for path in sorted((work / "results").rglob("*.json")):
    try:
        results[str(path.relative_to(work / "results"))] = json.loads(path.read_text())
    except ValueError as exc:
        results[str(path.relative_to(work / "results"))] = {"unreadable": str(exc)}
meta = {p.stem: p.read_text().strip() for p in (work / "logs").glob("meta_*.txt")}
summary = {"meta": meta, "steps": steps, "all_ok": bool(steps) and all(s["rc"] == 0 for s in steps),
           "results": results}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
print(json.dumps({"all_ok": summary["all_ok"], "steps": steps}, indent=1))
PY
  tar -czf "$OUT/session.tar.gz" -C "$WORK" logs results 2> /dev/null
  cat "$OUT/steps.txt"
}

# 0. preflight: a usable CUDA device and the image's versions (fails fast without one)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$WORK/logs/meta_gpu.txt" 2>&1
if ! step preflight 30 python3 -c "
import sys, torch, triton
print(torch.__version__, triton.__version__)
if not torch.cuda.is_available():
    sys.exit('no usable CUDA device: torch.cuda.is_available() is False')
print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())
torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()
"; then
  cp "$WORK/logs/preflight.log" "$WORK/logs/meta_preflight.txt"
  finish
  exit 2
fi
cp "$WORK/logs/preflight.log" "$WORK/logs/meta_versions.txt"

# 1. GPU correctness: CUDA graphs (reduce-overhead), one compile pool per graph, bf16 and float32
#    attention vs SDPA/float64, the GEMM precision candidates (ieee, tf32x3, extern; tf32; bf16) vs cuBLAS
step runtime_check 100 python3 benchmarks/gpu_runtime_check.py --out "$WORK/results/runtime_check.json"
# 2. the image's torch 2.11 / Triton 3.6: the sm_90 compile checks (registers, spills, shared memory)
#    and the attention kernels in the interpreter, as CI runs them
step compat_tests 80 python3 -m pytest -q -p no:cacheprovider -p no:randomly -n 8 -m "not slow" \
  tests/core/test_gpu_compile.py tests/attention/test_kernels.py
# 3. the model suite: correctness of every kernel case first, then eager / Inductor / vendor timings
#    (75 s, was 120: its budget stops starting cases in time; the 45 s went to step 7)
step gpu_suite 75 python3 -m benchmarks.gpu_suite --out "$WORK/results/suite" --budget-s 65
# 4. fused attention vs SDPA-flash and FlexAttention (quick grid: 2 lengths, D=64, fwd and fwd+bwd)
step attention_bench 60 python3 benchmarks/attention_bench.py --out "$WORK/results/attention" --quick
# 5. the CPU target on this machine's cores, in the same report: three kernels and one model (every
#    system compiles each case cold, Inductor's C++ too: more cases do not fit the limit), short rounds
step cpu_target 60 python3 -m benchmarks.cpu_target --out "$WORK/results/cpu_target.json" --rounds 3 \
  --round-ms 50 --compile-times "" \
  --cases "softmax 2048x1024,layer_norm 2048x1024,linear+bias+gelu 512x768x3072,gpt2 4x384 b2 s128"
# 6. block-sparse attention (CPU target) against its dense fused kernel at 4k tokens
step sparse_attention_cpu 30 python3 benchmarks/sparse_attention.py --lengths 4096 --reps 3 \
  --out "$WORK/results/sparse_attention_cpu.json"
# 7. the Triton block-sparse kernels: block-sparse attention (given index; XAttention estimate
#    included) vs our dense fused attention, SDPA-flash and FlexAttention with the same BlockMask;
#    BSR matmul vs cuBLAS and torch's 2:4 semi-structured; float64 checks first (writes as it goes)
step gpu_sparse 45 python3 -m benchmarks.gpu_sparse --lengths 4096,16384 --budget-s 30 \
  --out "$WORK/results/gpu_sparse.json"
finish
