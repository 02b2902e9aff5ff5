"""COCO evaluation with pycocotools."""

from raykd.eval.coco import METRIC_NAMES, coco_metrics, detections_to_coco, gather_detections

__all__ = ["METRIC_NAMES", "coco_metrics", "detections_to_coco", "gather_detections"]
