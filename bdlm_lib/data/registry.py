"""Registered dataset names: where their files live locally and where to download them."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str              # sub-folder of the data dir
    format: str              # ml1m | tsv | amazon2014 | amazon2018
    noun: str                # "movies" / "products" in prompts
    # official files: (url, file name, checksum "md5:…"/"sha256:…" or None); fetched when missing
    downloads: tuple = field(default_factory=tuple)


_SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
REGISTRY: dict[str, DatasetSpec] = {
    "ml1m": DatasetSpec("ml1m", "movielens-1m", "ml1m", "movies", (
        ("https://files.grouplens.org/datasets/movielens/ml-1m.zip", "ml-1m.zip",
         "md5:c4d9eecfca2ab87c1945afe126590906"),)),
    "amazon-health": DatasetSpec("amazon-health", "amazon-health", "tsv", "products", (
        (f"{_SNAP}/reviews_Health_and_Personal_Care_5.json.gz", "reviews_Health_and_Personal_Care_5.json.gz", None),
        (f"{_SNAP}/meta_Health_and_Personal_Care.json.gz", "meta_Health_and_Personal_Care.json.gz", None))),
    "amazon-beauty": DatasetSpec("amazon-beauty", "amazon-beauty", "tsv", "products", (
        (f"{_SNAP}/reviews_Beauty_5.json.gz", "reviews_Beauty_5.json.gz", None),
        (f"{_SNAP}/meta_Beauty.json.gz", "meta_Beauty.json.gz", None))),
    "amazon-grocery": DatasetSpec("amazon-grocery", "amazon-grocery", "amazon2014", "products", (
        (f"{_SNAP}/reviews_Grocery_and_Gourmet_Food_5.json.gz", "reviews_Grocery_and_Gourmet_Food_5.json.gz", None),
        (f"{_SNAP}/meta_Grocery_and_Gourmet_Food.json.gz", "meta_Grocery_and_Gourmet_Food.json.gz", None))),
}


def default_data_dir() -> Path:
    env = os.environ.get("BDLM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "bdlm" / "data"


def resolve(name_or_path: str, data_dir: str | os.PathLike | None = None) -> tuple[DatasetSpec | None, Path]:
    """(spec, folder) for a registered name, or (None, folder) for a path to a folder."""
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        return spec, Path(data_dir or default_data_dir()) / spec.folder
    p = Path(name_or_path)
    if p.is_dir():
        return None, p
    from .loaders import DataError
    raise DataError(f"dataset '{name_or_path}': not a registered name ({', '.join(REGISTRY)}) "
                    f"nor an existing folder")
