"""Do float32 results on a CPU depend on which kernels PyTorch picks for the processor? One conv +
GroupNorm forward and backward, the same inputs and seed, in a fresh process per setting: this
machine's own kernels, ATen's vectorised kernels forced down to the baseline (``ATEN_CPU_CAPABILITY=default``),
oneDNN's convolutions forced down to SSE4.1 (``ONEDNN_MAX_CPU_ISA``), and both. Different sums mean a
run's bits — and after hundreds of iterations its AP — depend on the CPU, not only on the code
(why ``benchmarks/out/ap.json`` records each run's machine).

``python -m benchmarks.cpu_kernels`` (a few seconds); writes ``benchmarks/out/cpu_kernels.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.common import machine, save

PROBE = """
import json, torch
torch.set_num_threads(1)
torch.manual_seed(0)
x = torch.randn(8, 64, 32, 32)
w = torch.randn(64, 64, 3, 3, requires_grad=True)
z = torch.nn.functional.group_norm(torch.nn.functional.conv2d(x, w, padding=1), 8).sigmoid()
(z * z).sum().backward()
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "output_sum": z.double().sum().item(), "grad_sum": w.grad.double().sum().item()}))
"""
SETTINGS = {
    "this machine": {},
    "ATen baseline": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "both": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def probe(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    rows = {name: {"env": env, **probe(env)} for name, env in SETTINGS.items()}
    for name, r in rows.items():
        print(f"{name:14} {r['capability']:8} output {r['output_sum']!r:22} grad {r['grad_sum']!r}")
    distinct = len({(r["output_sum"], r["grad_sum"]) for r in rows.values()})
    print(f"{distinct} distinct results from {len(rows)} kernel settings")
    save("cpu_kernels.json", {"machine": machine(), "rows": rows, "distinct": distinct})


if __name__ == "__main__":
    main()
