"""Registered dataset names: where their files live locally and where to download them."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str              # sub-folder of the data dir
    format: str              # the layout of the local copy: ml1m | tsv | amazon2014 | amazon2018
    noun: str                # "movies" / "products" in prompts
    # official files: (url, file name, checksum "md5:…"/"sha256:…" or None); fetched when missing.
    # The files the downloads bring are in the raw official layout (detected when loading).
    downloads: tuple = field(default_factory=tuple)

    def with_base_url(self, base_url: str) -> "DatasetSpec":
        """The same spec with every download fetched from `base_url`/<file name> (a mirror, or a
        local test server); checksums are kept, so a mirror serving other bytes is refused."""
        base = base_url.rstrip("/")
        return dataclasses.replace(self, downloads=tuple(
            (f"{base}/{name}", name, checksum) for _url, name, checksum in self.downloads))

    def with_downloads(self, downloads) -> "DatasetSpec":
        """The same spec with other (url, file name, checksum) triples."""
        return dataclasses.replace(self, downloads=tuple(tuple(d) for d in downloads))


_SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
# SNAP publishes no checksums for the Amazon files: they are fetched unverified and their sha256
# is recorded in the prepared data's manifest.json (inputs_sha256). ml-1m.zip's md5 is GroupLens'.
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


def resolve(name_or_path: str, data_dir: str | os.PathLike | None = None,
            spec: DatasetSpec | None = None) -> tuple[DatasetSpec | None, Path]:
    """(spec, folder) for a registered name, or (None, folder) for a path to a folder.

    An explicit `spec` (e.g. `REGISTRY["ml1m"].with_base_url(mirror)`) replaces the registered
    one; its folder is looked up in `data_dir` like a registered name's."""
    if spec is not None:
        return spec, Path(data_dir or default_data_dir()) / spec.folder
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        return spec, Path(data_dir or default_data_dir()) / spec.folder
    p = Path(name_or_path)
    if p.is_dir():
        return None, p
    from .loaders import DataError
    raise DataError(f"dataset '{name_or_path}': not a registered name ({', '.join(REGISTRY)}) "
                    f"nor an existing folder")
