"""`make bench` and the other benchmark scripts start (they are not run: each takes minutes to hours);
the GPU benchmark runs whole at its CPU-tiny size."""

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import TESTS

ROOT = TESTS.parent


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_make_bench_entry_point_parses_its_arguments():
    proc = run("-m", "benchmarks.kd_vs_student", "--help")  # what `make bench` runs, with --help
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--methods" in proc.stdout and "--seeds" in proc.stdout


def test_every_benchmark_module_imports():
    modules = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")
    assert {"common", "kd_vs_student", "step_time"} <= set(modules)
    proc = run("-c", "; ".join(f"import benchmarks.{m}" for m in modules))
    assert proc.returncode == 0, proc.stderr[-2000:]


# Every row the GPU benchmark must write, at any size: raykd's step per method and precision, the
# teacher's cost, mmengine's Runner beside raykd's loop, and the shared-device search beside the whole one.
GPU_BENCH_ROWS = {
    *(f"raykd {m} {p}" for m in ("none", "feature", "icd", "frs", "crosskd", "mgd", "policy") for p in ("fp32", "fp16", "bf16")),
    *(f"teacher {part} {p}" for part in ("features", "full") for p in ("fp32", "fp16", "bf16")),
    "mmengine Runner none fp32", "raykd loader+step none fp32", "raykd / mmengine throughput",
    "search 2-at-once", "search 1-whole", "trials per hour, shared / whole",
}


@pytest.mark.e2e  # two real searches
def test_gpu_bench_runs_at_its_cpu_tiny_size(tmp_path, ray_cluster):
    """What a GPU machine runs, at the CPU size: every row, every number finite and positive. Its
    searches join the session's Ray instance (RAY_ADDRESS), as they join a running one on a GPU box."""
    out = tmp_path / "gpu_bench.json"
    proc = subprocess.run(["bash", "benchmarks/gpu_bench.sh", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert set(rows) == GPU_BENCH_ROWS
    for name, row in rows.items():
        numbers = [v for k, v in row.items() if isinstance(v, float)]
        assert numbers and all(math.isfinite(v) and v > 0 for v in numbers), (name, row)
    assert result["setup"]["size"] == "tiny"


def test_vs_mmdet_runner_side_trains_a_run_shorter_than_its_warm_up(tmp_path):
    """mmengine's side of ``benchmarks.vs_mmdet`` built from an experiment as it is today (its loader
    settings and schedule; the demo's 50 iterations are shorter than its 100-iteration warm-up)."""
    out = tmp_path / "runner.json"
    proc = run("-m", "benchmarks.vs_mmdet", "--runner", str(TESTS / "data" / "tiny.yaml"), "1", "0", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["iterations"] == 1 and got["train_s"] > 0


def test_a_kd_row_check_says_whether_the_recorded_run_had_this_machines_kernels():
    from benchmarks.common import machine, same_machine

    now = machine()
    assert now["cpu_capability"] and now["torch"]
    assert same_machine(now, now).startswith("same kernels")
    assert "may differ by CPU" in same_machine({**now, "cpu_capability": "AVX512" if now["cpu_capability"] != "AVX512" else "AVX2"}, now)
    assert "recorded without its machine" in same_machine(None, now)
    # An AVX-512 processor with ATen capped at AVX2 but oneDNN not: not an AVX2 machine's kernels (a
    # record from before oneDNN's was recorded names ATen's only, as taken on AVX2 machines).
    avx2_record = {"cpu_capability": "AVX2", "torch": now["torch"]}
    capped_aten = {**now, "cpu_avx512": True, "cpu_capability": "AVX2", "onednn_isa": "AVX512"}
    assert "may differ by CPU" in same_machine(avx2_record, capped_aten) and "ONEDNN_MAX_CPU_ISA" in same_machine(avx2_record, capped_aten)
    assert same_machine(avx2_record, {**capped_aten, "onednn_isa": "AVX2"}).startswith("same kernels")


def test_capping_the_kernels_is_recorded(monkeypatch):
    from benchmarks.common import machine

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert machine()["onednn_isa"] == "AVX2" and machine()["kernel_env"] == {"ONEDNN_MAX_CPU_ISA": "avx2"}


def test_search_value_resumes_an_interrupted_search_and_restarts_any_other(tmp_path):
    from benchmarks.search_value import interrupted_before

    for status, resumed in (("interrupted", True), ("finished", False), ("failed", False)):
        folder = tmp_path / status
        folder.mkdir()
        (folder / "search.json").write_text(json.dumps({"space": "s.yaml", "parent_run_id": "0" * 32, "status": status}))
        assert interrupted_before(folder) is resumed
        assert folder.exists() is resumed  # a search measured again starts from an empty folder
    assert interrupted_before(tmp_path / "never-run") is False


def test_gpu_bench_keeps_a_failing_row_and_goes_on():
    """On a GPU lent for minutes, one method's failure (a CUDA-only bug, out of memory) must not cost
    the other rows: the row keeps its error, the phase goes on, and the run's exit status says so."""
    from benchmarks import gpu_bench

    def broken():
        raise RuntimeError("CUDA out of memory")

    row = gpu_bench.measured_row("raykd icd bf16", broken, phase="steps", method="icd")
    assert row == {"name": "raykd icd bf16", "phase": "steps", "method": "icd",
                   "error": "RuntimeError: CUDA out of memory"}
    assert gpu_bench.measured_row("ok", lambda: {"name": "ok", "s_per_step": 0.1}) == {"name": "ok", "s_per_step": 0.1}
