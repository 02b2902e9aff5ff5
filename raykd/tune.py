"""``python -m raykd.tune SPACE.yaml``: search distillation set-ups with Ray Tune + Optuna + ASHA,
every trial a Ray Train run, everything recorded in MLflow.

Resume an interrupted search with ``python -m raykd.tune --resume RESULTS_DIR``.

Only light modules are imported at the top, so that ``--help`` and a bad command line exit at once
(0.1 s instead of 1.5 s); the rest is imported by the function that needs it: the space loader
(torch, mmengine, Optuna), the pre-flight check, the report, and the search runner (Ray, Ray Tune:
about 0.9 s more, paid only once a space has been loaded and checked).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from raykd.common.errors import ConfigError, exits_cleanly
from raykd.search.layout import PARETO_FILE, read_state
from raykd.tracking.store import Tracker, absolute_uri


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykd.tune", description=__doc__.split("\n\n")[0])
    p.add_argument("space", nargs="?", type=Path, help="search-space YAML (e.g. search_spaces/demo.yaml)")
    p.add_argument("--results-dir", type=Path, help="where results go (default: runs/search-<space>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RESULTS_DIR", help="continue an interrupted search")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: from the space/experiment file)")
    p.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else a local one)")
    p.add_argument("--num-samples", type=int, help="override search.num_samples")
    p.add_argument("--verbose", action="store_true", help="also show Ray's worker logs and warnings and Tune's "
                                                          "result tables (default: one line per trial event)")
    p.add_argument("--table-every", type=float, default=60.0, metavar="SECONDS",
                   help="print the table of trials at most this often (default 60; 0: after every trial event)")
    p.add_argument("--check", action="store_true", help="pre-flight check (models, checkpoints, data, step times, "
                                                        "compute estimate) without Ray; exit 0 or 2")
    return p.parse_args(argv)


def _load(args: argparse.Namespace):
    state = read_state(args.resume) if args.resume else None
    if state is not None and state["status"] == "finished":
        raise ConfigError(str(args.resume), "--resume", "this search already finished")
    if state is None and args.space is None:
        raise ConfigError("command line", "space", "give a search-space file, or --resume RESULTS_DIR")
    from raykd.spaces import load_space  # heavy: see the module's docstring

    if state is not None:
        return load_space(state["space"]), args.resume, state.get("tracking_uri")
    space = load_space(args.space)
    if args.table_every < 0:
        raise ConfigError("--table-every", "", f"must be >= 0 seconds (got {args.table_every:g})")
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise ConfigError("--num-samples", "", f"must be >= 1 (got {args.num_samples})")
        space = space.model_copy(update={"search": space.search.model_copy(update={"num_samples": args.num_samples})})
    if args.check:
        return space, None, args.tracking_uri
    results = args.results_dir or Path("runs") / f"search-{args.space.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if results.exists() and any(results.iterdir()):
        raise ConfigError(str(results), "--results-dir", "already exists and is not empty (use --resume to continue it)")
    return space, results, args.tracking_uri


@exits_cleanly
def main(argv: list[str] | None = None):
    args = parse_args(argv)
    space, results_dir, uri = _load(args)
    if args.check:
        from raykd.cli.check import SearchPlan, print_check

        f = space.search.finalists
        plan = SearchPlan(trials=space.search.num_samples + len(space.default_methods), schedule=space.schedule,
                          subset=space.subset, finalist_runs=(f.top_k + 1) * f.seeds if f else 0)
        return print_check(space.exp, space.run_resources, plan)
    from raykd.search.runner import run_search

    outcome = run_search(space, results_dir, resume=bool(args.resume), address=args.address,
                         tracking_uri=args.tracking_uri or uri, verbose=args.verbose, table_every_s=args.table_every)
    print()
    if outcome.interrupted:
        print(f"search interrupted; nothing is lost. Resume with:\n  python -m raykd.tune --resume {outcome.results_dir}")
        raise SystemExit(130)
    _print_summary(space, outcome, absolute_uri(args.tracking_uri or uri or space.exp.tracking_uri))
    if outcome.best is None:  # every trial failed: a script (or CI) must not read this as a search done
        raise SystemExit(1)
    return outcome


def _overhead_line(timeline: dict) -> str:
    """Where the trial slots went: the share outside train/eval/warm-up steps, then a trial's mean phases."""
    phases = " · ".join(f"{name.replace('_', ' ')} {s:.0f} s" for name, s in timeline["mean_trial_s"].items())
    return (f"{100 * timeline['overhead_fraction']:.0f}% of trial-slot time outside training/eval/warm-up steps "
            f"({100 * timeline['overhead_fraction_with_warmup']:.0f}% counting ICD-style warm-up as overhead); "
            f"per trial (mean): {phases}; idle slots {timeline['idle_slot_s']:.0f} s")


def _pareto_line(space, outcome) -> str:
    """Several objectives: where the front is, and which of its trials best.yaml holds."""
    first = space.objective_list[0]
    return (f"pareto front:  {len(outcome.pareto)} trials ({', '.join(outcome.pareto)}) in {outcome.results_dir / PARETO_FILE};\n"
            f"               best.yaml holds the front's best {first.metric} ({first.mode}; ties: the next objectives). "
            f"Retrain another with: python -m raykd.final {outcome.results_dir} --trial ID")


def _print_finalists(outcome) -> None:
    from raykd.search.validation import table_text

    f = outcome.finalists
    reused = f" ({f['reused_runs']} reused from the search)" if f["reused_runs"] else ""
    print(f"\nfinalists at the full schedule, {f['trained_runs']} runs{reused}:")
    print(table_text(f))
    if outcome.best is not None:
        print(f"answer:        best.yaml holds {outcome.best.trial_id} ({outcome.best.method.name}), the best "
              "full-schedule mean")


def _compute_line(space, outcome) -> str:
    from raykd.search.runner import compute_spent

    c = compute_spent(space, outcome)
    finalists = f" + finalists {c['finalist_epochs']}" if outcome.finalists is not None else ""
    trainings = (f" = {c['full_trainings']:.1f} full trainings of {c['full_schedule_epochs']} epochs"
                 if c["full_trainings"] is not None else "")
    return f"compute:       {c['search_trial_epochs']} trial-epochs{finalists}{trainings}"


def _print_summary(space, outcome, uri: str) -> None:
    print("=" * 72)
    from raykd.cli.report import metrics_table
    from raykd.search.fidelity import search_fidelity
    from raykd.search.references import comparison_line
    from raykd.search.trust import agreement_line

    tl = outcome.timeline
    print(f"search finished: {len(outcome.trials)} trials in {outcome.wall_s / 60:.1f} min "
          f"(search phase {tl['search_s'] / 60:.1f} min on {tl['slots']} slots)")
    print(_overhead_line(tl))
    # Scores at a short schedule rank set-ups; they are not what the full schedule will reach.
    print(f"fidelity: {search_fidelity(space).describe()} (algorithm {space.search.algorithm})")
    for t in outcome.trials:
        status = f"error: {t['error']}" if t["error"] else f"epochs {t['epoch']}  {space.metric} {t['score']:.4f}"
        print(f"  trial {t['trial_id']} ({t['method']}): {status}")
    best = outcome.best
    if best is None:
        print("no trial finished; nothing to promote")
        return
    print(f"\nbest trial {best.trial_id}: method {best.method.name} {json.dumps(best.method.params)}"
          + (f" teacher {best.method.teacher}" if best.method.teacher else ""))
    print(metrics_table({f"best ({best.method.name})": best.metrics}))
    if outcome.vs_defaults is not None:
        print(comparison_line(outcome.vs_defaults, search_fidelity(space).describe()))
    if (line := agreement_line(outcome.rung_agreement, space.metric)) is not None:
        print(line)
    for note in space.default_notes:
        print(f"note:          {note}")
    if outcome.finalists is not None:
        _print_finalists(outcome)
    print(_compute_line(space, outcome))
    print(f"\nresults:       {outcome.results_dir}")
    print(f"best config:   {outcome.results_dir / 'best.yaml'}")
    if outcome.pareto is not None:
        print(_pareto_line(space, outcome))
    print(f"MLflow parent: {outcome.parent_run_id}")
    print(f"compare trials: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    print(f"  then open     {Tracker(uri).runs_url(space.exp.name)}")
    print(f"next:           python -m raykd.final {outcome.results_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
