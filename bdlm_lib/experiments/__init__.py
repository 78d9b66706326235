"""Experiments: batches of notebooks over papermill (`batch`) and the paper's tables and figures
assembled from stored run folders (`report`). Nothing here imports a model: these modules read
params files, notebooks, metrics.json and predictions.parquet only.
"""
from .batch import BatchError, expand_batch, load_batch, run_batch

__all__ = ["BatchError", "expand_batch", "load_batch", "run_batch", "build_report"]


def __getattr__(name):  # the report pulls in seaborn/matplotlib: import it only when asked for
    if name == "build_report":
        from .report import build_report
        return build_report
    raise AttributeError(name)
