"""Data: loaders for the raw formats, the paper's processing, and the shared evaluation sets."""
from .dataset import RecDataset, dataset_dir, load_dataset, load_prepared, prepare_dataset, table1
from .loaders import DataError

__all__ = ["RecDataset", "DataError", "dataset_dir", "load_dataset", "load_prepared",
           "prepare_dataset", "table1"]
