"""``python -m raykd.cli.publish_teachers EXPERIMENT``: publish the experiment's trained teachers beside it.

Trains every ``train:`` teacher the cache lacks (published copies are not used for this), then copies
them to ``<experiment dir>/teachers/<name>-<key>/`` with ``teachers/SHA256SUMS``, which later runs take
instead of training. With an empty ``RAYKD_CACHE`` it retrains them all: the checksums it prints say
whether this machine reproduced the published files bit for bit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from raykd.common.errors import exits_cleanly
from raykd.load import load_experiment


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raykd.cli.publish_teachers", description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="experiment YAML (e.g. experiments/shapes_demo.yaml)")
    p.add_argument("--out", type=Path, help="Ray Train's runs (default: runs/publish-teachers-<time>; a run of the "
                                            "same name in the same folder would resume, not retrain)")
    return p.parse_args(argv)


@exits_cleanly
def main(argv: list[str] | None = None) -> dict[str, str]:
    args = parse_args(argv)
    exp = load_experiment(args.experiment)
    from raykd.train.launch import RunConsole
    from raykd.train.teacher_runs import ensure_teachers
    from raykd.train.teachers import (
        CHECKSUMS,
        publish_teachers,
        published_root,
        read_checksums,
        trained_teachers,
    )

    out = (args.out or Path("runs") / f"publish-teachers-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    # What the cache lacks is trained here, never copied back from the published files.
    ensure_teachers(exp, trained_teachers(exp), out / "ray", RunConsole(out / "ray.log", False), use_published=False)
    before = read_checksums(published_root(exp) / CHECKSUMS)
    publish_teachers(exp)
    after = read_checksums(published_root(exp) / CHECKSUMS)
    for relative, digest in after.items():
        was = before.get(relative)
        verdict = "new" if was is None else "unchanged" if was == digest else "CHANGED"
        print(f"{digest[:16]}  {relative}  ({verdict})")
    print(f"published to {published_root(exp)}")
    return after


if __name__ == "__main__":
    main()
