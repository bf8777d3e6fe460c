#!/usr/bin/env bash
# Every GPU figure that docs/performance.md lists as missing, and the gpu-marked tests, in one call of the
# device tool (at most 560 s of step limits; run it with timeout_s 600).
#
#   here, once (a machine that reaches PyPI):  make gpu-wheels
#       pytorch-metric-learning for the device image's Python 3.12, into .whl/ (ignored by git): facelab imports
#       it and that image lacks it; torch, numpy, opencv, scipy, yaml, tqdm, tensorboard and pytest are there.
#   on the device (run with carry [".whl"]):   bash bench/gpu_check.sh
#
# Output: $OUT/<step>.log for each step (./gpu-check/ when OUT is unset), $OUT/env.txt (GPU, driver, versions) and
# $OUT/summary.txt (one line per step: exit status and seconds). A step that fails or passes its time limit does
# not stop the others; the script exits non-zero if any step failed. Left for a second call if time remains:
# bench.bench_throughput --device cuda --models iresnet50 --no-cudnn-benchmark (what train.cudnn_benchmark buys).
# QUICK=1 DEVICE=cpu PYTHON=.venv/bin/python bash bench/gpu_check.sh: the same steps at smoke sizes on a CPU
# (tests/bench/test_gpu_check.py), so that the script itself is known to run before a device is spent on it.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
QUICK=${QUICK:-0}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/facelab-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/facelab-site
fi
export PYTHONPATH="src:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MPLCONFIGDIR=/tmp/facelab-mpl TORCHINDUCTOR_CACHE_DIR=/tmp/facelab-inductor

{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  nproc
  "$PYTHON" - <<'PY'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
PY
} >"$OUT/env.txt" 2>&1

: >"$OUT/summary.txt"
failed=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, one line in summary.txt
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $(( $(date +%s) - start ))s: $*" | tee -a "$OUT/summary.txt"
  [ "$rc" = 0 ] || failed=1
}

if [ "$QUICK" = 1 ]; then  # smoke sizes: the plumbing, not the figures
  W="--workers 0 1"; TP="--models tiny --batch-size 4 --steps 1 --warmup 1 --workers 1"
  LD="--model tiny --batch-size 8 --batches 2"; PFC="--classes 2000 --rates 1.0 0.1 --dim 32 --repeats 1"
  IJB="--images 64 --window 32 --workers 0"; STEPS=4
else
  W="--workers 0 4 8 12"; TP="--workers 12"
  LD="--model iresnet50 --batch-size 256 --batches 20 --steps 10"
  PFC="--classes 100000 1000000 10000000 --rates 1.0 0.3 0.1 --warmup 2 --repeats 5"
  IJB="--workers 0 4 8"; STEPS=200
fi

# gpu-marked tests first: they say whether the CUDA paths work at all (sync-free Partial FC step, CUDA resume)
step tests 60 "$PYTHON" -m pytest -q -m gpu tests/train/test_cuda.py tests/distributed/test_shares_and_partial_fc.py
# training images/s and MFU: iresnet50 with torch.compile (the target figure), the other two eager
if [ "$QUICK" = 1 ]; then
  step throughput 120 "$PYTHON" -m bench.bench_throughput --device "$DEVICE" $TP
else
  step throughput_r50 140 "$PYTHON" -m bench.bench_throughput --device "$DEVICE" --models iresnet50 --compile $TP
  step throughput_mbf_r100 80 "$PYTHON" -m bench.bench_throughput --device "$DEVICE" --models mobilefacenet iresnet100 $TP
fi
step loader 60 "$PYTHON" -m bench.bench_loader --device "$DEVICE" $LD $W
step partial_fc 100 "$PYTHON" -m bench.bench_partial_fc --device "$DEVICE" $PFC --json "$OUT/partial_fc.json"
step ijb_features 80 "$PYTHON" -m bench.bench_ijb_features --device "$DEVICE" $IJB
step train_loop 40 "$PYTHON" -m bench.bench_train_loop --device "$DEVICE" --steps "$STEPS" --workers 4
exit $failed
