"""Distillation methods. Each knows nothing of Ray or MLflow."""

from raykd.distill.base import Distiller, KDStep, MethodParams, get_method, method_names

__all__ = ["Distiller", "KDStep", "MethodParams", "get_method", "method_names"]
