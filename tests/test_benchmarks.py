"""`make bench` and the other benchmark scripts start (they are not run: each takes minutes to hours)."""

import subprocess
import sys

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
