"""What a training checkpoint folder holds and where the newest one is (read by resumes, teacher caching and raykd.final,
some of which must not import torch just to find a file)."""

from pathlib import Path

STUDENT_FILE = "student.pth"  # the student's state_dict: the deliverable of a run
TRAIN_STATE_FILE = "state.pth"  # optimizers + loss scaler, distiller modules, stage/epoch/iteration, history: what a resume needs
TIMELINE_PREFIX = "timeline."  # report keys of a worker's phase timestamps (raykd/search/timeline.py)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest Ray Train checkpoint folder of a run (what a resumed run restarts from)."""
    dirs = [p for p in run_dir.glob("checkpoint_*") if (p / STUDENT_FILE).is_file()]
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None
