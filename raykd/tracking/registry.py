"""The final student in the MLflow Model Registry, without pickles.

A version is an ``mlflow.pyfunc`` model logged *from code*: its artifacts are the student's
``state_dict`` (``student.pth``) and the model spec (mmdet config name + overrides, YAML), and its
``load_context`` rebuilds the detector with ``build_detector`` and loads the weights with
``weights_only=True``. No Python object is serialised, so loading runs no stored bytecode.

The tracking URI is always passed explicitly (an ``MlflowClient`` per call); with a sqlite store
the registry lives in the same database.
"""

from __future__ import annotations

import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import torch
import yaml
from mlflow.artifacts import download_artifacts
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mmcv.transforms import Compose
from mmengine.dataset import pseudo_collate
from pydantic import BaseModel

from raykd.common.errors import ConfigError
from raykd.data.loaders import dataset_class_maps, resolve_data
from raykd.models.builder import build_detector, load_weights

STUDENT_ARTIFACT = "student"
SPEC_ARTIFACT = "model_spec"
SPEC_FILE = "model_spec.yaml"
MODEL_NAME = "student"  # the logged model's name inside the run

# The models-from-code file: the only thing MLflow executes when it loads a version.
_CODE = """\
import mlflow.models

from raykd.tracking.registry import DetectorModel

mlflow.models.set_model(DetectorModel())
"""


class Detection(BaseModel):
    """One box of ``DetectorModel.predict`` (COCO xywh, in the original image's pixels)."""

    image_index: int
    category_id: int
    score: float
    x: float
    y: float
    w: float
    h: float


class DetectorModel(mlflow.pyfunc.PythonModel):
    """An mmdet detector rebuilt from its spec and state_dict.

    ``predict`` takes image file paths and returns their detections (``image_index`` is the
    position of the image in the input). ``self.detector`` is the eval-mode ``nn.Module`` itself.
    """

    def load_context(self, context) -> None:
        spec_path = context.artifacts[SPEC_ARTIFACT]
        self.spec = yaml.safe_load(Path(spec_path).read_text())
        self.detector = build_detector(self.spec["config"], self.spec.get("overrides") or {}, spec_path, "config")
        load_weights(self.detector, context.artifacts[STUDENT_ARTIFACT], spec_path, STUDENT_ARTIFACT)
        self.detector.eval()
        self._pipeline = None

    def _transforms(self):
        if self._pipeline is None:
            scale = tuple(self.spec.get("image_scale") or (1333, 800))
            self._pipeline = Compose([
                dict(type="LoadImageFromFile"),
                dict(type="Resize", scale=scale, keep_ratio=True),
                dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor")),
            ])
        return self._pipeline

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[Detection]:
        paths = [str(p) for p in model_input]
        batch_size = int((params or {}).get("batch_size", 4))
        cat_ids = self.spec.get("cat_ids") or []
        out: list[Detection] = []
        with torch.no_grad():
            for start in range(0, len(paths), batch_size):
                items = [self._transforms()({"img_path": p, "img_id": start + i})
                         for i, p in enumerate(paths[start : start + batch_size])]
                data = self.detector.data_preprocessor(pseudo_collate(items), False)
                for sample in self.detector.predict(data["inputs"], data["data_samples"], rescale=True):
                    pred = sample.pred_instances
                    for (x0, y0, x1, y1), score, label in zip(
                        pred.bboxes.tolist(), pred.scores.tolist(), pred.labels.tolist(), strict=True
                    ):
                        out.append(Detection(image_index=int(sample.img_id), score=score, x=x0, y=y0, w=x1 - x0,
                                             h=y1 - y0, category_id=int(cat_ids[label] if label < len(cat_ids) else label)))
        return out


def registered_name(exp) -> str:
    return exp.registered_model_name or f"raykd-{exp.name}"


def model_spec(exp) -> dict[str, Any]:
    """What rebuilds the student: its mmdet config and overrides, plus the data's input size and
    category ids (for ``predict``)."""
    paths = resolve_data(exp.dataset)
    _, val_map = dataset_class_maps(exp, paths)  # the label order the student was trained with
    return {
        "config": exp.student.config,
        "overrides": exp.student.overrides,
        "image_scale": list(paths.image_scale),
        "classes": list(val_map.names),
        "cat_ids": [int(i) for i in val_map.cat_ids],
    }


def _requirements() -> list[str]:
    reqs = []
    for pkg in ("raykd", "torch", "mmcv", "mmengine", "mmdet", "mlflow", "pyyaml", "pydantic"):
        try:
            reqs.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def register_student(
    tracking_uri: str,
    run_id: str,
    exp,
    student_path: str | Path,
    metrics: dict[str, float],
    tags: dict[str, str] | None = None,
    description: str = "",
    step: int = 0,
):
    """Log the student as a pyfunc model of ``run_id`` and register it as a new version of
    ``registered_name(exp)``. Returns the ``ModelVersion``; its tags hold the AP figures."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    name = registered_name(exp)
    ap_tags = {k: repr(float(v)) for k, v in metrics.items() if k.startswith("bbox_")}
    model = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, tags={**(tags or {}), **ap_tags},
        model_type="mmdet-detector",
    )
    with tempfile.TemporaryDirectory(prefix="raykd-model-") as tmp:
        spec_path = Path(tmp) / SPEC_FILE
        spec_path.write_text(yaml.safe_dump(model_spec(exp), sort_keys=False))
        code = Path(tmp) / "raykd_detector_model.py"
        code.write_text(_CODE)
        local = Path(tmp) / "model"
        meta = Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                     model_id=model.model_id)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*An input example was not provided")
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=str(code),
                artifacts={STUDENT_ARTIFACT: str(Path(student_path).resolve()), SPEC_ARTIFACT: str(spec_path)},
                    pip_requirements=_requirements(),
                mlflow_model=meta,
            )
        client.log_model_artifacts(model.model_id, str(local))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
    try:
        client.create_registered_model(name, description=f"raykd distilled students of experiment {exp.name!r}")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    # The source is the logged model's artifact location, not ``models:/<model_id>``: MLflow's sqlite
    # registry resolves the latter through the process-global tracking URI, not this client's.
    return client.create_model_version(
        name, source=model.artifact_location, run_id=run_id, tags={**(tags or {}), **ap_tags},
        description=description, model_id=model.model_id,
    )


def load_registered_model(tracking_uri: str, name: str, version: str | int) -> DetectorModel:
    """The registered pyfunc's Python model (``.detector``, ``.spec``, ``.predict``)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # Resolved through this client: a ``models:/name/version`` URI would go through the global URI.
    try:
        source = client.get_model_version_download_uri(name, str(version))
    except MlflowException:
        raise ConfigError(tracking_uri, f"{name}/{version}", "no such registered model version") from None
    with tempfile.TemporaryDirectory(prefix="raykd-model-") as tmp:
        local = download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=tracking_uri)
        # Everything is read in load_context, so the download can go once this returns.
        return mlflow.pyfunc.load_model(local).unwrap_python_model()


def load_registered_detector(tracking_uri: str, name: str, version: str | int):
    """The registered student as an eval-mode mmdet detector (``torch.nn.Module``)."""
    return load_registered_model(tracking_uri, name, version).detector
