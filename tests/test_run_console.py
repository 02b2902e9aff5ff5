"""What ``python -m raykd.run`` prints with Ray Train workers: raykd's own progress lines by default,
Ray's (Train controller and worker logs, a helper actor's traceback, warnings) in OUT/ray.log;
``--verbose`` shows Ray's on the terminal too. A real run in a subprocess, as a user starts it."""

import os
import subprocess
import sys

from conftest import TINY
from test_search_console import RAY_INTERNALS


def run(tmp_path, *options):
    out = tmp_path / ("verbose" if options else "quiet")
    # As from a shell: a Ray instance running here (the e2e session's) is found and joined with its token.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    proc = subprocess.run([sys.executable, "-m", "raykd.run", str(TINY), "--workers", "1", "--schedule", "1",
                           "--out", str(out), *options], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, out


def test_a_run_shows_raykd_lines_and_logs_rays_unless_verbose(tmp_path):
    proc, out = run(tmp_path)
    terminal = proc.stdout + proc.stderr
    for internal in (*RAY_INTERNALS, "Traceback", "pid="):
        assert internal not in terminal, internal
    lines = proc.stdout.splitlines()
    assert f"[raykd] Ray's own output (Train controller and worker logs, warnings) goes to {out / 'ray.log'}; " \
           "--verbose shows it here" in lines
    assert any(ln.startswith("[raykd] ") and " epoch 1/1 done: AP " in ln for ln in lines)  # the worker's line
    log = (out / "ray.log").read_text()
    assert "TrainController pid=" in log and "[raykd] " in log
    assert (out / "metrics.json").is_file()

    proc, out = run(tmp_path, "--verbose")
    assert "TrainController pid=" in proc.stdout + proc.stderr
    assert "[raykd] " in proc.stdout and not (out / "ray.log").exists()
