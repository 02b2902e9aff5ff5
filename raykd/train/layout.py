"""What a training checkpoint folder holds (read by resumes, teacher caching and raykd.final,
some of which must not import torch just to find a file)."""

STUDENT_FILE = "student.pth"  # the student's state_dict: the deliverable of a run
TRAIN_STATE_FILE = "state.pth"  # optimizers + loss scaler, distiller modules, stage/epoch/iteration, history: what a resume needs
TIMELINE_PREFIX = "timeline."  # report keys of a worker's phase timestamps (raykd/search/timeline.py)
