"""mmdet detectors built from configs through mmdet's registry."""
