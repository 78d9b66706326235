"""Data: loaders for the raw formats, the paper's processing, and the shared evaluation sets."""
from .dataset import RecDataset, dataset_dir, load_dataset, load_prepared, prepare_dataset, table1
from .loaders import DataError
from .registry import REGISTRY, DatasetSpec

__all__ = ["RecDataset", "DataError", "DatasetSpec", "REGISTRY", "dataset_dir", "load_dataset",
           "load_prepared", "prepare_dataset", "table1"]
