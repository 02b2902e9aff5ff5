#!/bin/bash
# Every KD method through the single-run CLI on the demo experiment, on 1 and 2 Ray workers,
# 2 epochs each: a check that each runs under DDP, not a comparison of methods (see kd_vs_student).
# Usage: bash benchmarks/cli_workers.sh [OUT_DIR]   (about 12 min on 2 cores, teachers cached)
# Raw results (AP, wall time, stages; the machine): benchmarks/out/cli_workers.json.
set -u
cd "$(dirname "$0")/.."
out=${1:-runs/cli_workers}
mkdir -p "$out"
for m in icd frs crosskd mtpd; do
  sets=()
  [ "$m" = mtpd ] && sets=(--set "order=[gfl_r34_w32,gfl_r18_w32]")
  for w in 1 2; do
    start=$(date +%s)
    .venv/bin/python -m raykd.run experiments/shapes_demo.yaml --method "$m" "${sets[@]}" --workers "$w" \
      --schedule 2 --out "$out/$m-w$w" > "$out/$m-w$w.log" 2>&1
    echo "$m workers=$w rc=$? wall=$(( $(date +%s) - start ))s" | tee -a "$out/summary.txt"
  done
done
# One JSON from the runs' metrics.json files and the wall times above (a failed run has no entry).
.venv/bin/python - "$out" <<'PYEOF'
import json, re, sys
from pathlib import Path
from benchmarks.common import machine, save
out = Path(sys.argv[1])
walls = {(m, w): wall for m, w, wall in re.findall(r"^(\S+) workers=(\d) rc=0 wall=(\d+)s$",
                                                   (out / "summary.txt").read_text(), re.M)}
rows = {}
for (m, w), wall in walls.items():
    run = json.loads((out / f"{m}-w{w}" / "metrics.json").read_text())
    rows[f"{m}/workers{w}"] = {"bbox_mAP": run["final"]["bbox_mAP"], "bbox_mAP_50": run["final"]["bbox_mAP_50"],
                               "wall_s": int(wall), "workers": int(w), "epochs": len(run["history"]),
                               "stages": [s.get("teacher") for s in run["stages"]], "machine": machine()}
print(f"cli_workers: {len(rows)} runs -> {save('cli_workers.json', rows)}")
PYEOF
