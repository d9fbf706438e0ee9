"""Experiment tracking: MLflow on the rank that holds the loss, nothing elsewhere."""
from .mlflow_tracker import MLflowTracker, NullTracker, flatten, resolve_uri

__all__ = ["MLflowTracker", "NullTracker", "flatten", "resolve_uri"]
