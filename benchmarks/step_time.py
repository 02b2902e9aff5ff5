"""KD step time against its floor, measured side by side in one process.

Every method's training step (preprocessing, forward, backward, optimizer step) runs on the same
batches as the pieces its floor is made of, interleaved (each piece once per round, in a random
order per round) so that machine noise hits all of them alike; times are the thread's CPU time
(torch on one thread), which other jobs on the machine barely change, and a ratio is the median
over rounds of that round's own ratio. The pieces:

- ``student``: a plain mmdet student step (``student.loss``, backward, SGD step), no distillation;
- ``teacher_feat``: the teacher's backbone and neck under ``no_grad`` (what feature, ICD and MGD read);
- ``teacher_cls``: the same plus its dense head's classification branch (what FRS reads: its scores);
- ``teacher_full``: the same plus its whole dense head (what CrossKD reads: all its predictions);
- ``own_<method>``: the method's own modules, forward, backward and SGD step, on precomputed
  features (detached student features that take a gradient, cached teacher features): feature's
  and FRS's adapters, MGD's aligns and generators, ICD's decoder, query encoder, aux head and value
  projections (its whole loss), CrossKD's cross-head path (alignment, then the teacher head's
  remaining convs and predictors, whose gradient flows back to the student's held feature).

A method's floor is ``student + teacher (the part it reads) + own``; the ratio to the floor is what
distillation costs beyond its own irreducible work. Results go to ``benchmarks/out/step_time.json``
under ``--label`` (other labels in the file are kept, for before/after comparisons).

Run: ``python -m benchmarks.step_time [--steps 20] [--label after]`` (as a module: it imports
``benchmarks.common``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import DEMO, OUT, VARIANTS, save
from raykd.data.loaders import build_dataset, build_loader, class_names, resolve_data
from raykd.distill import crosskd as crosskd_mod
from raykd.distill import frs as frs_mod
from raykd.distill.base import KDStep, get_method
from raykd.load import load_experiment
from raykd.models.builder import build_detector, freeze, load_weights
from raykd.train.model import DistillModel
from raykd.train.teacher_runs import ensure_teachers
from raykd.train.teachers import teacher_checkpoint

# Which part of the teacher each method reads (its floor's teacher term).
TEACHER_PART = {"feature": "teacher_feat", "icd": "teacher_feat", "mgd": "teacher_feat",
                "frs": "teacher_cls", "crosskd": "teacher_full"}


def _leaves(feats) -> tuple[torch.Tensor, ...]:
    return tuple(f.detach().clone().requires_grad_() for f in feats)


def _own_adapters(distiller, pre) -> torch.Tensor:
    """FRS: its 3x3 adapters and the squared error to the teacher's features."""
    return sum(((t - a(s)).pow(2)).sum() for a, s, t in zip(distiller.adapters, pre["s_feats"], pre["t_feats"], strict=True))


def _own_losses(distiller, pre) -> torch.Tensor:
    """Feature, MGD, ICD: their losses touch no network but their own modules."""
    t_feats = pre["t_feats"]
    step = KDStep(pre["inputs"], pre["samples"], pre["s_feats"], lambda _n: t_feats, 10_000, 100_000)
    return sum(distiller.losses(step).values())


def _own_crosskd(distiller, pre) -> torch.Tensor:
    """CrossKD: the cross-head path from the student's held features (aligned to the teacher's)."""
    total = 0
    for level, (s_cls, s_reg, t_cls, t_reg) in enumerate(pre["holds"]):
        if distiller.cls_adapter is not None:
            s_cls, s_reg = distiller.cls_adapter(s_cls), distiller.reg_adapter(s_reg)
        outs = distiller._teacher_rest(crosskd_mod._align(s_cls, t_cls), crosskd_mod._align(s_reg, t_reg), level, cross=True)
        total = total + sum(o.float().sum() for o in outs if o is not None)
    return total


OWN: dict[str, Callable] = {"feature": _own_losses, "mgd": _own_losses, "icd": _own_losses,
                            "frs": _own_adapters, "crosskd": _own_crosskd}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--label", default="latest", help="key of this run in step_time.json (others are kept)")
    args = p.parse_args()
    torch.set_num_threads(1)
    exp = load_experiment(DEMO)
    ensure_teachers(exp, exp.teacher_names, DEMO.parents[1] / "runs" / "teachers")
    tname = exp.first_teacher
    t = exp.teachers[tname]
    teacher = freeze(build_detector(t.config, t.overrides))
    load_weights(teacher, teacher_checkpoint(exp, tname))
    teachers = {tname: teacher}
    paths = resolve_data(exp.dataset)
    ds = build_dataset(paths.train, paths.image_scale, True, class_names(paths.train.ann_file))
    loader = build_loader(ds, exp.optim.batch_size, True, 0, 1, 0)
    batches = [b for _, b in zip(range(4), loader, strict=False)]

    def new_student():
        return build_detector(exp.student.config, exp.student.overrides)

    setups = {}
    for name, v in VARIANTS.items():
        if v["method"] == "mtpd" or not v.get("table", True):
            continue  # an MTPD stage costs what its base method (MGD) costs
        student = new_student()
        method, mparams = v["method"], v.get("params", {})
        cls = get_method(method)
        distiller = cls(student, teachers, cls.Params(**mparams), tname if cls.uses_teacher else None)
        model = DistillModel(student, distiller, teachers)
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01, momentum=0.9)
        setups[name] = (student, model, opt)
    plain = new_student()
    plain_opt = torch.optim.SGD([q for q in plain.parameters() if q.requires_grad], lr=0.01, momentum=0.9)

    # Inputs of the floor's pieces, computed once per batch (not timed).
    pre = []
    for batch in batches:
        data = plain.data_preprocessor(batch, True)
        with torch.no_grad():
            s_feats = plain.extract_feat(data["inputs"])
            t_feats = teacher.extract_feat(data["inputs"])
        entry = {"inputs": data["inputs"], "samples": data["data_samples"], "s_feats": _leaves(s_feats), "t_feats": t_feats}
        ck = setups["crosskd"][1].distiller
        holds = []
        with torch.no_grad():
            for s, tf in zip(s_feats, t_feats, strict=True):
                sh, th, k = plain.bbox_head, teacher.bbox_head, ck.index
                holds.append((*_leaves((crosskd_mod._hold(sh.cls_convs, s, k, ck.post_act),
                                        crosskd_mod._hold(sh.reg_convs, s, k, ck.post_act))),
                              crosskd_mod._hold(th.cls_convs, tf, k, ck.post_act),
                              crosskd_mod._hold(th.reg_convs, tf, k, ck.post_act)))
        entry["holds"] = holds
        pre.append(entry)
    # lr 0: the same optimizer work, without moving the modules the method steps also train.
    own_opts = {name: torch.optim.SGD([q for q in setups[name][1].distiller.parameters() if q.requires_grad] or
                                      [torch.zeros(1, requires_grad=True)], lr=0.0, momentum=0.9)
                for name in OWN if name in setups}

    def method_step(name: str, bi: int, it: int) -> None:
        student, model, opt = setups[name]
        data = student.data_preprocessor(batches[bi], True)
        loss, _ = student.parse_losses(model(data["inputs"], data["data_samples"], it + 10_000, 100_000))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def student_step(bi: int, it: int) -> None:
        data = plain.data_preprocessor(batches[bi], True)
        loss, _ = plain.parse_losses(plain.loss(data["inputs"], data["data_samples"]))
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()

    t_head, t_kind = frs_mod._frs_head(teacher)

    def teacher_step(head: str, bi: int, it: int) -> None:
        with torch.no_grad():
            feats = teacher.extract_feat(pre[bi]["inputs"])
            if head == "full":
                t_head(feats)
            elif head == "cls":
                for f in feats:
                    frs_mod._HEADS[t_kind][0](t_head, f)

    def own_step(name: str, bi: int, it: int) -> None:
        entry = pre[bi]
        for leaf in (*entry["s_feats"], *(h for hs in entry["holds"] for h in hs[:2])):
            leaf.grad = None
        loss = OWN[name](setups[name][1].distiller, entry)
        own_opts[name].zero_grad()
        loss.backward()
        own_opts[name].step()

    tasks: dict[str, Callable[[int, int], None]] = {
        "student": student_step,
        "teacher_feat": lambda bi, it: teacher_step("", bi, it),
        "teacher_cls": lambda bi, it: teacher_step("cls", bi, it),
        "teacher_full": lambda bi, it: teacher_step("full", bi, it),
    }
    for name in setups:
        tasks[name] = lambda bi, it, name=name: method_step(name, bi, it)
        if name in OWN:
            tasks[f"own_{name}"] = lambda bi, it, name=name: own_step(name, bi, it)

    # Each round runs every task once, in a fresh random order (no task always follows the same
    # one), on the same batch. Time is this thread's CPU time (torch runs on it alone: 1 thread): on
    # a machine shared with other jobs, wall time mostly measures how long the scheduler kept this
    # process waiting; wall-clock medians are kept beside it. Ratios are taken within a round, and
    # their median over rounds is reported; the s/step columns are medians too.
    order, rng = list(tasks), random.Random(0)
    rounds: list[dict[str, float]] = []
    walls: dict[str, list[float]] = {k: [] for k in tasks}
    for it in range(args.steps + 3):
        rng.shuffle(order)
        took = {}
        for key in order:
            w0, t0 = time.perf_counter(), time.thread_time()
            tasks[key](it % len(batches), it)
            took[key] = time.thread_time() - t0
            if it >= 3:
                walls[key].append(time.perf_counter() - w0)
        if it >= 3:  # warm-up rounds are not timed
            rounds.append(took)
    med = {k: statistics.median(r[k] for r in rounds) for k in tasks}
    wall = {k: statistics.median(v) for k, v in walls.items()}

    def ratio(name: str, to: tuple[str, ...]) -> float:
        return statistics.median(r[name] / sum(r[k] for k in to) for r in rounds)

    base = med["student"]
    rows = {}
    for name in setups:
        row = {"median_s": med[name], "wall_median_s": wall[name], "ratio": ratio(name, ("student",))}
        if name in OWN:
            floor = ("student", TEACHER_PART[name], f"own_{name}")
            row.update({"teacher_s": med[TEACHER_PART[name]], "teacher_part": TEACHER_PART[name],
                        "own_s": med[f"own_{name}"], "floor_s": sum(med[k] for k in floor),
                        "ratio_to_floor": ratio(name, floor)})
        rows[name] = row
    result = {
        "pieces_s": {k: med[k] for k in ("student", "teacher_feat", "teacher_cls", "teacher_full")},
        "own_s": {k: med[k] for k in tasks if k.startswith("own_")},
        "methods": rows,
        "setup": {"steps": args.steps, "batch_size": exp.optim.batch_size, "threads": 1, "teacher": tname,
                  "student_step": "plain mmdet student.loss + backward + SGD step",
                  "clock": "thread CPU time (wall-clock medians: wall_median_s)",
                  "ratios": "median over rounds of the ratio within a round"},
    }
    print(f"batch {exp.optim.batch_size}, 1 thread, teacher {tname}; student step {base:.3f} s, teacher: neck "
          f"{med['teacher_feat']:.3f} s, + cls branch {med['teacher_cls']:.3f} s, + head {med['teacher_full']:.3f} s "
          "(an MTPD stage = mgd)")
    print(f"{'method':<10} {'s/step':>8} {'vs student':>11} {'floor s':>8} {'vs floor':>9}")
    for name, r in rows.items():
        extra = f" {r['floor_s']:8.3f} {r['ratio_to_floor']:8.2f}x" if "floor_s" in r else ""
        print(f"{name:<10} {r['median_s']:8.3f} {r['ratio']:10.2f}x{extra}")
    path = OUT / "step_time.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved and "methods" not in saved and not any(isinstance(v, dict) and "methods" in v for v in saved.values()):
        saved = {"session2_before": saved}  # the file's first layout: one run, method -> ratio
    saved[args.label] = result
    print(f"written to {save('step_time.json', saved)} under {args.label!r}")


if __name__ == "__main__":
    main()
