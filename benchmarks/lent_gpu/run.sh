#!/bin/bash
# Device side of benchmarks/lent_gpu/prepare.sh (copied to .whl/run.sh there): installs the carried wheels
# into /tmp/site (each group once per machine: a warm machine keeps /tmp between calls), builds mmcv
# 2.1.0's CPU ops against the image's torch (GFL's training step calls no mmcv op; the CUDA ops would
# take far longer), then runs gpu_bench with the phases given. Results and logs under $OUT.
# Usage: bash .whl/run.sh PHASE...   (CALL_LIMIT: seconds this call may take, default 560)
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s)
log() { echo "[dev $(( $(date +%s) - T0 ))s] $*"; }
export PATH=/opt/torch/.venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.is_available())"
PIPI="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
for d in base ray extra; do
  if ls .whl/$d/*.whl >/dev/null 2>&1 && [ ! -f /tmp/site/.done-$d ]; then
    $PIPI --target /tmp/site .whl/$d/*.whl || exit 3; touch /tmp/site/.done-$d
  fi
done
[ -d /tmp/build ] || { $PIPI --target /tmp/build .whl/build/*.whl || exit 3; }
export PYTHONPATH=/tmp/site
log installed
if ! python3 -c "import mmcv.ops" 2>/dev/null; then
  rm -rf /tmp/mmcv && mkdir -p /tmp/mmcv && tar xzf .whl/src/mmcv-2.1.0.tar.gz -C /tmp/mmcv
  CF="$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS"))') -g0"  # as the Makefile
  ( cd /tmp/mmcv/mmcv-2.1.0 && CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 MAX_JOBS=16 CFLAGS="$CF" \
    PYTHONPATH=/tmp/build:/tmp/site python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/mmcvwhl . ) \
    > $OUT/mmcv_build.log 2>&1 || { tail -40 $OUT/mmcv_build.log; exit 4; }
  $PIPI --target /tmp/site /tmp/mmcvwhl/*.whl || exit 3
  log mmcv built
fi
python3 -c "import mmcv.ops, mmdet.models, raykd.train.model, pydantic; print('imports ok')" || exit 5
python3 -c "import ray.train, ray.tune, mlflow, optuna; print('search imports ok')" 2>&1 | tail -2  # call 2 adds them
LEFT=$(( ${CALL_LIMIT:-560} - ($(date +%s) - T0) ))
log "bench gets ${LEFT}s"
PYTHON=python3 timeout $LEFT bash benchmarks/gpu_bench.sh $(for p in "$@"; do echo --phase $p; done) \
  --out $OUT/gpu_bench.json --work /tmp/gb 2>&1 | tee $OUT/gpu_bench.log | grep -v "^\s*$" | tail -80
rc=${PIPESTATUS[0]}
log "bench exit $rc"
for s in /tmp/gb/search-*; do  # each search's console and Ray's own log (why a trial failed)
  [ -d $s ] && tail -c 2000000 $s/ray.log > $OUT/$(basename $s)-ray.log 2>/dev/null
  [ -f $s.log ] && tail -c 300000 $s.log > $OUT/$(basename $s).log
done
exit $rc
