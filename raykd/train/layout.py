"""What a training checkpoint folder holds, where the newest one is, and where a run keeps its stages' students
(read by resumes, teacher caching, raykd.final and a search's trial actors, none of which need torch for a path)."""

from pathlib import Path

STUDENT_FILE = "student.pth"  # the student's state_dict: the deliverable of a run
TRAIN_STATE_FILE = "state.pth"  # optimizers + loss scaler, distiller modules, stage/epoch/iteration, history, every rank's random streams: what a resume needs
TIMELINE_PREFIX = "timeline."  # report keys of a worker's phase timestamps (raykd/search/timeline.py)
STAGES_DIR = "stages"  # a multi-stage run's students at the end of each stage (raykd/train/stage_checkpoints.py)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest Ray Train checkpoint folder of a run (what a resumed run restarts from)."""
    dirs = [p for p in run_dir.glob("checkpoint_*") if (p / STUDENT_FILE).is_file()]
    return max(dirs, key=lambda p: p.stat().st_mtime) if dirs else None


def as_uri(location: str | Path) -> str:
    """An object-store URI as it is, a local path made absolute (what pyarrow's from_uri needs)."""
    return str(location).rstrip("/") if "://" in str(location) else str(Path(location).resolve())


def stages_uri(storage_path: str | Path, run_name: str) -> str:
    return f"{as_uri(storage_path)}/{run_name}/{STAGES_DIR}"
