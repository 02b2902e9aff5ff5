"""raykd: search knowledge-distillation set-ups for object detectors."""

__version__ = "0.1.0"
