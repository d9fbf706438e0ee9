"""Experiment tracking: MLflow on the rank that holds the loss, nothing elsewhere."""
from .mlflow_tracker import MLflowTracker, NullTracker, default_spool_dir, resolve_uri
from .redact import flatten, redact

__all__ = ["MLflowTracker", "NullTracker", "default_spool_dir", "flatten", "redact",
           "resolve_uri"]
