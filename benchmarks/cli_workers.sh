#!/bin/bash
# Every KD method through the single-run CLI on the demo experiment, on 1 and 2 Ray workers,
# 2 epochs each: a check that each runs under DDP, not a comparison of methods (see kd_vs_student).
# Usage: bash benchmarks/cli_workers.sh [OUT_DIR]   (about 12 min on 2 cores, teachers cached)
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
