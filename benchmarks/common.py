"""Shared bits of the benchmark scripts: the methods compared and their demo settings."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

OUT = Path(__file__).parent / "out"
DEMO = Path(__file__).parents[1] / "experiments" / "shapes_demo.yaml"

# Each method at its paper defaults. MTPD follows its own rule: the teacher closer to the student
# first (gfl_r34_w32, 19.1 AP), the strongest last (gfl_r18_w32, 21.6 AP); MGD stages, as released.
# `mgd` alone distils from the strongest teacher (the experiment's default_teacher, gfl_r18_w32).
MTPD_ORDER = ["gfl_r34_w32", "gfl_r18_w32"]
VARIANTS: dict[str, dict] = {
    "none": {"method": "none"},
    "feature": {"method": "feature", "params": {"lambda": 0.5}},
    "icd": {"method": "icd"},
    "frs": {"method": "frs"},
    "crosskd": {"method": "crosskd"},
    "mgd": {"method": "mgd"},
    "mtpd": {"method": "mtpd", "params": {"order": MTPD_ORDER}},  # the 8 epochs split 4 + 4
    # MTPD's premise at the released protocol's budget: every stage trains the full schedule (8 + 8
    # epochs), against the strongest teacher alone for the same 16 epochs.
    "mtpd_full": {"method": "mtpd", "params": {"order": MTPD_ORDER, "stage_schedule": "full"}, "table": False},
    "mgd_16ep": {"method": "mgd", "epochs": 16, "table": False},
    # Ablations: ICD and MGD start the student's neck and head from the teacher (as the official
    # code does); `init_only` is that start with no distillation loss (MGD at alpha 0), `icd_noinit`
    # ICD without it.
    "init_only": {"method": "mgd", "params": {"alpha_mgd": 0.0}, "table": False},
    "icd_noinit": {"method": "icd", "params": {"init_student": False}, "table": False},
}


T = TypeVar("T")

def machine() -> dict[str, str]:
    """What a CPU run's float32 bits depend on besides the code: PyTorch picks its CPU kernels (ATen's
    vectorised ones, oneDNN's convolutions) by the processor's instruction set, so the same run on an
    AVX-512 and an AVX2 machine differs in the last bits, and 800 iterations turn that into AP. An
    AVX-512 machine computes the AVX2 machines' bits with both forced down (``KERNEL_ENV``): the
    processor's own instruction sets and the forcing variables set are recorded beside the kernels used."""
    import torch

    flags = _cpu_flags()
    return {"cpu": _cpu_model(), "cpu_avx512": "avx512f" in flags,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn_isa": _onednn_isa(flags),
            "torch": torch.__version__,
            **({"kernel_env": forced} if (forced := {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}) else {})}


# ATen's vectorised kernels, oneDNN's convolutions and MKL's BLAS, each capped at an instruction set.
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _onednn_isa(flags: set[str]) -> str:
    """The instruction set oneDNN's convolutions use: the processor's best, or the cap set on them."""
    own = "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE41"
    return os.environ.get("ONEDNN_MAX_CPU_ISA", own).upper()


def _cpu_flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))


def _cpu_model() -> str:
    import platform

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())


def same_machine(recorded: dict | None, now: dict) -> str:
    """One line: whether a recorded run's machine can give the same bits as this one."""
    if not recorded:
        return "recorded without its machine (before session 10): the bits may differ by CPU alone"
    # Records before session 13 name ATen's kernels only, all taken on AVX2 processors without AVX-512,
    # whose oneDNN used AVX2 too.
    recorded = {"onednn_isa": recorded.get("cpu_capability"), **recorded}
    keys = ("cpu_capability", "onednn_isa", "torch")
    if all(recorded.get(k) == now[k] for k in keys):
        return f"same kernels (ATen {now['cpu_capability']}, oneDNN {now['onednn_isa']}, torch {now['torch']})"
    return ("other kernels: recorded on " + ", ".join(f"{recorded.get(k)}" for k in keys)
            + ", now " + ", ".join(now[k] for k in keys) + ": the bits may differ by CPU alone"
            + (" (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 give an AVX2 machine's)" if now.get("cpu_avx512") else ""))


def alternating(names: tuple[str, ...], rounds: int, measure: Callable[[str, int], T]) -> dict[str, list[T]]:
    """``measure(name, round)`` for every name in every round, the order reversed every other round, so
    a drift of the machine's load hits every variant alike."""
    out: dict[str, list[T]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(measure(n, r))
    return out


def save(name: str, data) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(data, indent=2))
    return path


def train_full_schedule(specs: dict, storage: Path, on_result) -> None:
    """Train each ``RunSpec`` of ``specs`` (keyed by name) as a Ray Tune trial with one Ray Train run,
    as many at once as the cluster holds; ``on_result(name, bbox_mAP)`` as each one finishes, so a
    phase cut short keeps what it trained."""
    from ray import tune

    from raykd.search.validation_runs import concurrent_runs, validation_run
    from raykd.train.cluster import trial_driver_resources
    from raykd.train.launch import ensure_ray

    class ReportEachRun(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            result = trial.last_result or {}
            if "bbox_mAP" in result:
                on_result(trial.config["run"], float(result["bbox_mAP"]))

    ensure_ray()
    storage = storage.resolve()
    tune.Tuner(
        tune.with_resources(  # the trial only waits: its Ray Train worker holds the CPU
            tune.with_parameters(validation_run, specs={k: v.to_dict() for k, v in specs.items()}, storage=str(storage)),
            trial_driver_resources(),
        ),
        param_space={"run": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_runs(next(iter(specs.values())))),
        run_config=tune.RunConfig(name=f"tune-{len(list(storage.glob('tune-*')))}", storage_path=str(storage), verbose=1,
                                  callbacks=[ReportEachRun()]),
    ).fit()


def run_phases(module: str, doc: str, phases: dict, raw_path: Path, kept: set[str], argv: list[str] | None) -> None:
    """A phased benchmark's command line: ``--phase NAME`` (repeatable) runs those phases; by default
    every phase runs, except those in ``kept`` that the raw JSON already holds (done before). The raw
    JSON is saved after each phase."""
    import argparse

    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    p.add_argument("--phase", choices=list(phases), action="append", help="run only these phases (default: all not done)")
    args = p.parse_args(argv)
    data = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    for name in args.phase or list(phases):
        if args.phase is None and name in kept and name in data:
            continue
        phases[name](data)
        save(raw_path.name, data)
        print(f"[{module.rsplit('.', 1)[-1]}] phase {name} done -> {raw_path}", flush=True)
