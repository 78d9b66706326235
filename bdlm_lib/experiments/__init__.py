"""Experiments: batches of notebooks over papermill. Nothing here imports a model: the runner
reads batch files, params files and notebooks, and each run's metrics.json."""
from .batch import BatchError, expand_batch, load_batch, run_batch

__all__ = ["BatchError", "expand_batch", "load_batch", "run_batch"]
