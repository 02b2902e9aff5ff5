"""KD step time relative to a student-only step, measured side by side in one process.

Every method's training step (forward, backward, optimizer step) runs on the same batches,
interleaved round-robin so that machine noise hits all of them alike; the ratio of medians is
reported. Run: ``python -m benchmarks.step_time [--steps 20]`` (as a module: it imports ``benchmarks.common``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import DEMO, VARIANTS, save
from raykd.data.loaders import build_dataset, build_loader, class_names, resolve_data
from raykd.distill.base import get_method
from raykd.load import load_experiment
from raykd.models.builder import build_detector, freeze, load_weights
from raykd.train.launch import ensure_teachers
from raykd.train.model import DistillModel
from raykd.train.teachers import teacher_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(1)
    exp = load_experiment(DEMO)
    ensure_teachers(exp, exp.teacher_names, DEMO.parents[1] / "runs" / "teachers")
    teachers = {}
    for name, t in exp.teachers.items():
        m = build_detector(t.config, t.overrides)
        load_weights(m, teacher_checkpoint(exp, name))
        teachers[name] = freeze(m)
    paths = resolve_data(exp.dataset)
    ds = build_dataset(paths.train, paths.image_scale, True, class_names(paths.train.ann_file))
    loader = build_loader(ds, exp.optim.batch_size, True, 0, 1, 0)
    batches = [b for _, b in zip(range(4), loader, strict=False)]

    setups = {}
    for name, v in VARIANTS.items():
        if v["method"] == "mtpd" or not v.get("table", True):
            continue  # an MTPD stage costs what its base method (MGD) costs
        student = build_detector(exp.student.config, exp.student.overrides)
        method, mparams = v["method"], v.get("params", {})
        cls = get_method(method)
        distiller = cls(student, teachers, cls.Params(**mparams), exp.first_teacher if cls.uses_teacher else None)
        model = DistillModel(student, distiller, teachers)
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
        setups[name] = (student, model, opt)

    def step(name: str, batch, it: int) -> float:
        student, model, opt = setups[name]
        t = time.perf_counter()
        data = student.data_preprocessor(batch, True)
        loss, _ = student.parse_losses(model(data["inputs"], data["data_samples"], it + 10_000, 100_000))
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    times = {name: [] for name in setups}
    for it in range(args.steps + 3):
        for name in setups:
            dt = step(name, batches[it % len(batches)], it)
            if it >= 3:  # warm-up steps are not timed
                times[name].append(dt)
    base = statistics.median(times["none"])
    rows = {
        name: {"median_s": statistics.median(ts), "ratio": statistics.median(ts) / base} for name, ts in times.items()
    }
    print(f"{'method':<10} {'s/step':>8} {'vs student':>11}   (batch {exp.optim.batch_size}, 1 thread; an MTPD stage = mgd)")
    for name, r in rows.items():
        print(f"{name:<10} {r['median_s']:8.3f} {r['ratio']:10.2f}x")
    print(f"written to {save('step_time.json', rows)}")


if __name__ == "__main__":
    main()
