#!/bin/bash
# Prepare a run of benchmarks/gpu_bench.sh on a bare CUDA machine whose python3 has torch but none of
# raykd's stack and no registry (this workplace's lent H200: Python 3.12, torch 2.11+cu130, 64 MiB per
# call). Run here, in the repository root; it fills the git-ignored .whl/ with cp312 wheels of the
# versions this .venv has (ray without its Java jars, mlflow without its web UI: the whole set does not
# fit one call), mmcv 2.1.0's source (built there, CPU ops only, ~1.5 min on 16 cores) and the device
# script. Then, on the device tool, two calls on one warm machine (it keeps /tmp for 30 s between calls):
#   1. move experiments/teachers out of the tree (50 MB; not used), then
#      run  `bash .whl/run.sh steps teacher loop`  carry [".whl/base", ".whl/ray", ".whl/build", ".whl/src", ".whl/run.sh"]
#   2. at once: run  `bash .whl/run.sh trials`    carry [".whl/extra", ".whl/run.sh"]
#   then put experiments/teachers back. Session 18: call 1 took 5.0 min, call 2 3.0 min (README, GPU).
set -eu
cd "$(dirname "$0")/../.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
rm -rf .whl && mkdir -p .whl/base .whl/ray .whl/extra .whl/build .whl/src
PY=.venv/bin/python
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins() { for d in "$@"; do echo "$d==$(version $d)"; done; }
get() {  # wheels for the device's Python, no dependencies (each group lists what the device lacks)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$@" 2>&1 | grep -v "^WARNING" || true
}
# What gpu_bench's steps/teacher/loop phases import that the image lacks, then what its searches add
# (read off every process of a CPU-tiny run with an import audit hook, session 18).
get .whl/base $(pins mmengine mmdet addict yapf termcolor platformdirs terminaltables shapely pycocotools \
  pydantic pydantic_core annotated-types typing-inspection typing_extensions)
get .whl/extra $(pins optuna alembic Mako SQLAlchemy colorlog mlflow-skinny mlflow-tracing cachetools cffi \
  cryptography databricks-sdk fastapi starlette importlib_metadata jsonschema jsonschema-specifications \
  referencing rpds-py opencensus opencensus-context opentelemetry-api opentelemetry-sdk opentelemetry-proto \
  opentelemetry-exporter-prometheus opentelemetry-semantic-conventions google-api-core google-auth \
  googleapis-common-protos aiohttp-cors colorful plotly prettytable sqlparse tensorboardX wcwidth)
get .whl/build setuptools==80.9.0
mkdir -p .whl/tmp && get .whl/tmp $(pins ray mlflow)
strip_wheel() {  # a wheel without the files under $2 (and their RECORD lines)
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile
src, drop, dst = sys.argv[1], sys.argv[2], sys.argv[3]
gone = lambda n: n.startswith(drop)
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    for info in zin.infolist():
        if gone(info.filename):
            continue
        data = zin.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(l for l in data.split(b"\n") if not gone(l.split(b",")[0].decode()))
        zout.writestr(info, data)
PY
}
for w in .whl/tmp/ray-*.whl; do strip_wheel "$w" ray/jars/ ".whl/ray/$(basename $w)"; done
for w in .whl/tmp/mlflow-*.whl; do strip_wheel "$w" mlflow/server/js/ ".whl/extra/$(basename $w)"; done
rm -rf .whl/tmp
url=$(curl -s -m 60 -H "Accept: application/vnd.pypi.simple.v1+json" https://pypi.org/simple/mmcv/ | python3 -c \
  "import json, sys; print(next(f['url'] for f in json.load(sys.stdin)['files'] if f['filename'] == 'mmcv-2.1.0.tar.gz'))")
curl -s -m 120 -o .whl/src/mmcv-2.1.0.tar.gz "$url"
cp benchmarks/lent_gpu/run.sh .whl/run.sh
du -sh .whl/*
