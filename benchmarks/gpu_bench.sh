#!/bin/bash
# GPU benchmark in one command (benchmarks/gpu_bench.py): raykd's step for every method in fp32/fp16/bf16,
# the teacher's cost, mmengine's Runner against raykd's loop, 4 trials sharing a GPU against 1 on all of it,
# on generated 1333x800 COCO-shaped data; writes benchmarks/out/gpu_bench.json (<= 8 min on one H200).
# Usage: bash benchmarks/gpu_bench.sh [--tiny] [--out FILE] [--work DIR] [--phase steps|teacher|loop|trials]...
#   --tiny: the CPU-sized run (tiny models and images, a few steps; what the tests run).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m benchmarks.gpu_bench "$@"
