"""Datasets: the embedded synthetic shapes set and COCO-format loaders through mmdet."""
