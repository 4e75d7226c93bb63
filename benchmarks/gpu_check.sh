#!/usr/bin/env bash
# The GPU check: every speed figure of the GPU path, in one run of under 8 minutes, one JSON.
#
#   benchmarks/gpu_check.sh [OUT_DIR]            # on a machine with a CUDA GPU
#   benchmarks/gpu_check.sh OUT_DIR --dry-run    # anywhere: the same steps, tiny, on the CPU
#
# 1. benchmarks/overhead.py on the GPU: osteo-train's fit against the plain loop, slow-step
#    (ResNet-18, 128 px) and fast-step (ResNet-10-T, 64 px) regimes, 3 repetitions.
# 2. benchmarks/throughput.py: bf16 training images/s of ResNet-50 and EfficientNet-B0 at 224 px,
#    the plain loop (synthetic batch on the GPU; the DataLoader) and osteo-train with no option,
#    model.channels_last, model.compile, data.on_device=resident and all three; peak GPU memory
#    and host-device synchronisations per 10 steps of each; then a short `trainer=gpu` fit +
#    test of the default model on the phantom, with its metrics and peak GPU memory.
# 3. OUT_DIR/gpu_check.json: both results, the GPU model, the date, the versions, the seconds.
#
# Runs from the repository root with the project's Python (PYTHON, default `python`), e.g.
# `PYTHON=.venv/bin/python benchmarks/gpu_check.sh results/gpu`. Nothing is downloaded.
set -euo pipefail

OUT="${1:-results/gpu_check}"
MODE="${2:-}"
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

if [ "$MODE" = "--dry-run" ]; then
  OVERHEAD=(--short --regimes fast --device cpu --override logger=csv)
  THROUGHPUT=(--dry-run --fit-test --backbones resnet10t)
elif [ -n "$MODE" ]; then
  echo "usage: $0 [OUT_DIR] [--dry-run]" >&2
  exit 2
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: use --dry-run')"
  nvidia-smi > "$OUT/nvidia_smi.txt" 2>&1 || true
  OVERHEAD=(--device gpu --regimes slow,fast --repeats 3 --threads 4)
  THROUGHPUT=(--fit-test --budget-s 200)
fi

echo "== overhead ($(($(date +%s) - START)) s)" >&2
timeout 180 "$PY" benchmarks/overhead.py "${OVERHEAD[@]}" --out "$OUT/overhead.json" \
  > "$OUT/overhead.log" 2>&1 || echo "overhead.py failed or timed out: see $OUT/overhead.log" >&2

echo "== throughput, fit + test ($(($(date +%s) - START)) s)" >&2
timeout 270 "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" --out "$OUT/throughput.json" \
  > "$OUT/throughput.log" 2>&1 || echo "throughput.py failed or timed out: see $OUT/throughput.log" >&2

"$PY" - "$OUT" "$START" "$MODE" <<'EOF'
import datetime, json, sys, time
from pathlib import Path

import torch

out, start, mode = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def load(name):
    path = out / name
    return json.loads(path.read_text()) if path.is_file() else None
result = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "dry_run": mode == "--dry-run",
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "seconds": round(time.time() - start, 1),
    "overhead": load("overhead.json"),
    "throughput": load("throughput.json"),
}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
missing = [k for k in ("overhead", "throughput") if result[k] is None]
print(f"{out / 'gpu_check.json'}: {result['seconds']} s" + (f"; missing: {missing}" if missing else ""))
sys.exit(1 if missing else 0)
EOF
