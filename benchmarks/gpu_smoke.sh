#!/bin/bash
# GPU smoke: a 2-trial search (each trial 1 worker x 0.5 GPU, fp16: both trials share one GPU) and a
# 2-worker run (2 x 0.5 GPU, bf16, gloo) of the tests' tiny set-up; timings to benchmarks/out/gpu_smoke.json.
# Usage: bash benchmarks/gpu_smoke.sh [WORK_DIR]   (needs one CUDA GPU; a few minutes)
set -u
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if ! $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_smoke: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing was run" >&2
  exit 2
fi
work=${1:-runs/gpu_smoke}
rm -rf "$work" && mkdir -p "$work" benchmarks/out
export RAYKD_CACHE=${RAYKD_CACHE:-$PWD/$work/cache}  # teachers train once, on the GPU, into a fresh cache

timed() {  # timed NAME CMD...: run, log to $work/NAME.log, record wall seconds and exit code
  local name=$1 start rc; shift
  start=$(date +%s%N)
  "$@" > "$work/$name.log" 2>&1; rc=$?
  echo "$name $rc $(( ($(date +%s%N) - start) / 1000000 ))" >> "$work/timings.txt"  # milliseconds
  echo "$name: rc=$rc (log: $work/$name.log)"
}

timed search $PY -m raykd.tune benchmarks/gpu_smoke_space.yaml --results-dir "$work/search" \
  --tracking-uri "sqlite:///$PWD/$work/mlflow.db"
timed run $PY -m raykd.run benchmarks/gpu_smoke.yaml --method feature --schedule 2 --out "$work/run"

$PY - "$work" <<'PY'
import json, sys
from pathlib import Path

import torch

work = Path(sys.argv[1])
rows = [line.split() for line in (work / "timings.txt").read_text().splitlines()]
out = {"device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
       **{name: {"rc": int(rc), "wall_s": round(int(ms) / 1000, 1)} for name, rc, ms in rows}}
search = work / "search" / "search.json"
if search.is_file():
    state = json.loads(search.read_text())
    out["search"].update(status=state.get("status"), train_s=state.get("train_s"))
metrics = work / "run" / "metrics.json"
if metrics.is_file():
    data = json.loads(metrics.read_text())
    out["run"].update(bbox_mAP=data["final"]["bbox_mAP"],
                      train_s=sum(h.get("train_time", 0) for h in data["history"]),
                      s_per_iter=[h.get("time_per_iter") for h in data["history"]])
Path("benchmarks/out/gpu_smoke.json").write_text(json.dumps(out, indent=2))
print(json.dumps(out, indent=2))
sys.exit(0 if all(v["rc"] == 0 for v in out.values() if isinstance(v, dict)) else 1)
PY
