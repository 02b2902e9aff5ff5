"""The experiment file: dataset, student, teacher pool, schedules, optimiser, resources.

Everything is checked when the file is loaded, before any work starts, so a typo costs a second,
not a search.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from raykd.common.errors import ConfigError, from_validation_error

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow's own default: a file in the working directory


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShapesData(Strict):
    """The embedded synthetic COCO-format dataset (see raykd.data.shapes)."""

    # Which fields are paths, relative to the experiment file (``resolve_paths``): none, it is generated.
    path_keys: ClassVar[tuple[str, ...]] = ()
    kind: Literal["shapes"] = "shapes"
    num_train: PositiveInt = 800
    num_val: PositiveInt = 200
    image_size: Annotated[int, Field(ge=32, le=1024)] = 128
    max_objects: Annotated[int, Field(ge=1, le=32)] = 8
    seed: int = 0


Transform = dict[str, Any]  # one mmdet transform, e.g. {type: RandomFlip, prob: 0.5}


class CocoData(Strict):
    """Any COCO-format set on disk (real COCO included).

    The pipelines default to the student config's ``train_pipeline`` / ``test_pipeline``, so the data
    is augmented as the detector's own recipe says; ``image_scale`` is a shortcut that sets the
    ``scale`` of those pipelines' ``Resize`` steps.
    """

    path_keys: ClassVar[tuple[str, ...]] = ("train_ann", "train_images", "val_ann", "val_images")
    kind: Literal["coco"]
    train_ann: Path
    train_images: Path
    val_ann: Path
    val_images: Path
    image_scale: tuple[PositiveInt, PositiveInt] | None = None
    train_pipeline: list[Transform] | None = None
    test_pipeline: list[Transform] | None = None

    @model_validator(mode="after")
    def _scale_or_pipelines(self) -> CocoData:
        if self.image_scale is not None and (self.train_pipeline or self.test_pipeline):
            raise ValueError("image_scale resizes the config's pipelines: give the scale inside "
                             "train_pipeline/test_pipeline instead")
        return self


# Each dataset kind's schema by its `kind:` tag; its behaviour is its DataSource (raykd.data.kinds).
DATASET_KINDS: dict[str, type[Strict]] = {"shapes": ShapesData, "coco": CocoData}
DatasetSpec = Annotated[ShapesData | CocoData, Field(discriminator="kind")]


class ModelSpec(Strict):
    """An mmdet 3.x config (``mmdet::retinanet/...py`` or a path) plus overrides of its ``model``."""

    config: str
    overrides: dict[str, Any] = {}


class Schedule(Strict):
    epochs: PositiveInt | None = None
    iters: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_length(self) -> Schedule:
        if (self.epochs is None) == (self.iters is None):
            raise ValueError("give exactly one of epochs or iters")
        return self

    def text(self) -> str:
        """``8 epochs`` or ``300 iterations``: how every table and log line names a schedule."""
        return f"{self.epochs} epochs" if self.epochs is not None else f"{self.iters} iterations"


class CosineSchedule(Strict):
    """Cosine decay from the base lr to 5 % of it over the schedule."""

    type: Literal["cosine"] = "cosine"


class StepSchedule(Strict):
    """mmdet's step schedule: the lr is multiplied by ``gamma`` at the start of each milestone epoch."""

    type: Literal["step"]
    milestones: Annotated[list[PositiveInt], Field(min_length=1)]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1

    @model_validator(mode="after")
    def _increasing(self) -> StepSchedule:
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"milestones must increase (got {self.milestones})")
        return self


LrSchedule = Annotated[CosineSchedule | StepSchedule, Field(discriminator="type")]


class Optim(Strict):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: Annotated[float, Field(gt=0, le=10)] = 0.02
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 1e-4
    batch_size: PositiveInt = 8  # global; split evenly across workers
    warmup_iters: Annotated[int, Field(ge=0)] = 100
    grad_clip: Annotated[float, Field(gt=0)] | None = 10.0
    max_loss: Annotated[float, Field(gt=0)] = 1e4  # a loss above this (or NaN/Inf) fails the run as diverged
    lr_schedule: LrSchedule = CosineSchedule()  # after the linear warm-up

    def key_dump(self, mode: str = "python") -> dict[str, Any]:
        """The fields as cache keys hash them. The default (cosine) schedule is left out: it was the
        only schedule before ``lr_schedule`` existed, so cached teachers and stage prefixes keep their keys."""
        dump = self.model_dump(mode=mode)
        if self.lr_schedule == CosineSchedule():
            dump.pop("lr_schedule")
        return dump


class TeacherTrain(Strict):
    """Train this teacher on first use (result cached by a hash of everything that defines it)."""

    schedule: Schedule
    optim: Optim | None = None
    seed: int = 0


class TeacherSpec(ModelSpec):
    checkpoint: Path | None = None
    train: TeacherTrain | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of checkpoint or train")
        return self


class Schedules(Strict):
    search: Schedule
    full: Schedule


class Resources(Strict):
    workers: Annotated[int, Field(ge=0, le=1024)] = 1  # 0 = in-process (no Ray cluster), for debugging
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0
    # Mixed precision on CUDA (ignored on CPU): fp16 (with a GradScaler) or bf16 (needs none).
    amp: Literal[False, "fp16", "bf16"] = False
    # DataLoader worker processes per training worker; default: 0 for the shapes set (worker
    # processes would change its random streams), min(4, cpus_per_worker) for COCO (DataSource.default_data_workers).
    data_workers: Annotated[int, Field(ge=0, le=64)] | None = None

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_true_is_fp16(cls, value: Any) -> Any:
        return "fp16" if value is True else value  # `amp: true` predates the choice; it meant fp16


class Experiment(Strict):
    name: str
    dataset: DatasetSpec
    student: ModelSpec
    teachers: dict[str, TeacherSpec]
    default_teacher: str | None = None
    schedules: Schedules
    optim: Optim = Optim()
    resources: Resources = Resources()
    seed: int = 0
    tracking_uri: str = DEFAULT_TRACKING_URI
    registered_model_name: str | None = None
    # Label order (label i = classes[i]); default: the train annotation file's categories sorted by id.
    classes: list[str] | None = None
    # Where this file was loaded from: relative paths inside it resolve against its folder.
    source: str = ""

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        if not self.teachers:
            raise ValueError("the teacher pool is empty")
        if self.default_teacher is not None and self.default_teacher not in self.teachers:
            raise ValueError(f"default_teacher {self.default_teacher!r} is not in teachers {sorted(self.teachers)}")
        workers = max(self.resources.workers, 1)
        if self.optim.batch_size % workers:
            raise ValueError(f"optim.batch_size {self.optim.batch_size} is not divisible by resources.workers {workers}")
        return self

    @property
    def teacher_names(self) -> list[str]:
        return list(self.teachers)

    @property
    def first_teacher(self) -> str:
        return self.default_teacher or next(iter(self.teachers))


def spec_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (used to key caches)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in the file are relative to the file, not to the caller's cwd."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not value.startswith(("mmdet::", "/", "~")) and "://" not in value:
            return str((base / value).resolve())
        return value

    def fix_model(spec: Any) -> Any:
        if not isinstance(spec, dict):
            return spec
        spec = {**spec}
        if "config" in spec:
            spec["config"] = fix(spec["config"])
        if isinstance(spec.get("overrides"), dict):
            spec["overrides"] = _fix_pretrained(spec["overrides"], fix)
        return spec

    data = dict(data)
    ds = data.get("dataset")
    if isinstance(ds, dict) and ds.get("kind") in DATASET_KINDS:
        path_keys = DATASET_KINDS[ds["kind"]].path_keys
        data["dataset"] = {k: fix(v) if k in path_keys else v for k, v in ds.items()}
    if "student" in data:
        data["student"] = fix_model(data["student"])
    if isinstance(data.get("teachers"), dict):
        teachers = {}
        for name, t in data["teachers"].items():
            t = fix_model(t)
            if isinstance(t, dict) and t.get("checkpoint"):
                t["checkpoint"] = fix(t["checkpoint"])
            teachers[name] = t
        data["teachers"] = teachers
    return data


def _fix_pretrained(node: Any, fix) -> Any:
    """``init_cfg: {type: Pretrained, checkpoint: PATH}`` anywhere in overrides: PATH is relative to the file."""
    if isinstance(node, list):
        return [_fix_pretrained(v, fix) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _fix_pretrained(v, fix) for k, v in node.items()}
    if out.get("type") in ("Pretrained", "PretrainedInit") and isinstance(out.get("checkpoint"), str):
        out["checkpoint"] = fix(out["checkpoint"])
    return out


def parse_experiment(data: dict[str, Any], source: str) -> Experiment:
    """The schema alone (no file is opened): ``raykd.load.load_experiment`` is what callers use."""
    try:
        return Experiment(**{**data, "source": source})
    except ValidationError as err:
        raise from_validation_error(source, err) from None
    except TypeError as err:
        raise ConfigError(source, "", str(err)) from None
