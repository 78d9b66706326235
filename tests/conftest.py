"""Shared fixtures. The data fixtures write one small synthetic dataset in EVERY supported raw
format (ML-1M .dat plain/gz/zip, Amazon 2014 Python-literal lines, Amazon 2018 JSON, generic
TSV plain/gz) so that each loader is exercised on real files, and every format must come out of
processing as the same dataset (same raw ids, same order, same titles)."""
from __future__ import annotations

import gzip
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

REAL_DATA = Path(os.environ.get("BDLM_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")

WORDS = ["red", "blue", "soap", "shampoo", "star", "wars", "vitamin", "tea", "green", "lotion",
         "mint", "organic", "classic", "night", "river", "gold", "silk", "coffee", "honey", "sun"]
N_USERS, N_ITEMS = 40, 60
UNIQUE_ITEM = 7          # its title shares no word with any other: the similarity pool runs dry
UNTITLED_ITEM = 60       # no title anywhere: dropped before k-core
RARE_ITEM = 59           # one interaction: removed by k-core
SHORT_USER = 40          # three interactions: removed by k-core
DUP_USER, DUP_ITEM = 1, 2  # rated twice; the earliest must be kept


def _titles() -> dict[int, str]:
    rng = np.random.default_rng(1)
    t = {}
    for i in range(1, N_ITEMS + 1):
        words = rng.choice(WORDS, size=3, replace=False)
        t[i] = " ".join(w.capitalize() for w in words) + f" ({1990 + i % 7})"
    t[UNIQUE_ITEM] = "Zyzzyva"
    t[3] = "Kid's Soap &amp; Lotion (1995)"      # HTML entity + a quote (Python-literal repr)
    t[4] = "Amélie Green Tea (1996)"               # non-ASCII, encodable in ISO-8859-1
    del t[UNTITLED_ITEM]
    return t


def _interactions() -> list[tuple[int, int, int]]:
    """(user, item, timestamp) rows in FILE order (grouped by user, shuffled within the user)."""
    rng = np.random.default_rng(0)
    pop = 1.0 / (np.arange(N_ITEMS - 2) + 5.0)   # items 1..58 with a popularity skew
    pop /= pop.sum()
    rows = []
    for u in range(1, N_USERS + 1):
        n = 3 if u == SHORT_USER else int(rng.integers(7, 19))
        items = rng.choice(np.arange(1, N_ITEMS - 1), size=n, replace=False, p=pop)
        ts = 978300000 + np.sort(rng.integers(0, 400, size=n)) * 1000  # coarse: some ties
        user_rows = [(u, int(i), int(t)) for i, t in zip(items, ts)]
        if u == DUP_USER:
            user_rows = [r for r in user_rows if r[1] != DUP_ITEM]
            user_rows += [(u, DUP_ITEM, 978300000 - 5), (u, DUP_ITEM, 978300000 + 999_999)]
        if u == 2:
            user_rows += [(u, RARE_ITEM, 978300000 + 7), (u, UNTITLED_ITEM, 978300000 + 9)]
        perm = rng.permutation(len(user_rows))
        rows += [user_rows[k] for k in perm]
    return rows


@pytest.fixture(scope="session")
def raw_data():
    """The synthetic dataset as Python objects: interactions in file order and titles."""
    return {"interactions": _interactions(), "titles": _titles()}


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def write_format(fmt: str, folder: Path, raw: dict) -> Path:
    """Write `raw` into `folder` in the layout `fmt`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inter, titles = raw["interactions"], raw["titles"]
    if fmt.startswith("ml1m"):
        ratings = "".join(f"{u}::{i}::{1 + (u + i) % 5}::{t}\n" for u, i, t in inter).encode("latin-1")
        movies = "".join(f"{i}::{t}::Comedy|Drama\n" for i, t in sorted(titles.items())).encode("latin-1")
        if fmt == "ml1m":
            (folder / "ratings.dat").write_bytes(ratings)
            (folder / "movies.dat").write_bytes(movies)
        elif fmt == "ml1m-gz":
            (folder / "ratings.dat.gz").write_bytes(_gz(ratings))
            (folder / "movies.dat.gz").write_bytes(_gz(movies))
        elif fmt == "ml1m-zip":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                for name, data in (("ml-1m/ratings.dat", ratings), ("ml-1m/movies.dat", movies),
                                   ("ml-1m/README", b"fixture")):
                    info = zipfile.ZipInfo(name, date_time=(2003, 1, 1, 0, 0, 0))
                    z.writestr(info, data, zipfile.ZIP_DEFLATED)
            (folder / "ml-1m.zip").write_bytes(buf.getvalue())
        else:
            raise ValueError(fmt)
    elif fmt == "amazon2014":
        # the 2014 files are Python dict literals (single quotes), as SNAP publishes meta_*
        reviews = "".join(repr({"reviewerID": str(u), "asin": str(i), "overall": 5.0,
                                "reviewText": "it's \"fine\"", "unixReviewTime": t}) + "\n"
                          for u, i, t in inter)
        meta = [repr({"asin": str(i), "title": t, "categories": [["Health"]], "price": 1.5})
                for i, t in sorted(titles.items())]
        meta.append(repr({"asin": str(UNTITLED_ITEM), "categories": [["Health"]]}))
        (folder / "reviews_Health_and_Personal_Care_5.json.gz").write_bytes(_gz(reviews.encode()))
        (folder / "meta_Health_and_Personal_Care.json.gz").write_bytes(_gz(("\n".join(meta) + "\n").encode()))
    elif fmt == "amazon2018":
        reviews = "".join(json.dumps({"reviewerID": str(u), "asin": str(i), "overall": 5.0,
                                      "verified": True, "unixReviewTime": t}) + "\n"
                          for u, i, t in inter)
        meta = [json.dumps({"asin": str(i), "title": t, "category": ["Grocery"]})
                for i, t in sorted(titles.items())]
        meta.append(json.dumps({"asin": str(UNTITLED_ITEM), "title": ""}))
        (folder / "Grocery_and_Gourmet_Food_5.json.gz").write_bytes(_gz(reviews.encode()))
        (folder / "meta_Grocery_and_Gourmet_Food.json.gz").write_bytes(_gz(("\n".join(meta) + "\n").encode()))
    elif fmt in ("tsv", "tsv-gz"):
        # seq_pos = the rank in (timestamp, file position) order, as the real processed files have
        order = sorted(range(len(inter)), key=lambda k: (inter[k][0], inter[k][2], k))
        seq, last_u, pos = {}, None, 0
        for k in order:
            pos = 0 if inter[k][0] != last_u else pos + 1
            last_u, seq[k] = inter[k][0], pos
        body = "user_id\titem_id\ttimestamp\tseq_pos\n" + "".join(
            f"{u}\t{i}\t{t}\t{seq[k]}\n" for k, (u, i, t) in enumerate(inter))
        tbody = "item_id\ttitle\n" + "".join(f"{i}\t{t}\n" for i, t in sorted(titles.items()))
        if fmt == "tsv":
            (folder / "interactions.tsv").write_text(body, encoding="utf-8")
            (folder / "item_titles.tsv").write_text(tbody, encoding="utf-8")
        else:
            (folder / "interactions.tsv.gz").write_bytes(_gz(body.encode()))
            (folder / "item_titles.tsv.gz").write_bytes(_gz(tbody.encode()))
    else:
        raise ValueError(f"unknown fixture format {fmt}")
    return folder


FORMATS = ["ml1m", "ml1m-gz", "ml1m-zip", "amazon2014", "amazon2018", "tsv", "tsv-gz"]


@pytest.fixture(scope="session")
def fixture_dirs(tmp_path_factory, raw_data):
    """{format: folder} — the synthetic dataset written once in every supported layout."""
    root = tmp_path_factory.mktemp("raw")
    return {fmt: write_format(fmt, root / fmt, raw_data) for fmt in FORMATS}


@pytest.fixture
def make_params(tmp_path):
    """make_params(dataset, preset="smoke", **dotted_overrides) with output under tmp_path/out."""
    from bdlm_lib import load_params

    def make(dataset, preset="smoke", **over):
        over = {k.replace("__", "."): v for k, v in over.items()}
        over.setdefault("output_dir", str(tmp_path / "out"))
        over.setdefault("data.sample_users", None)
        return load_params(str(dataset), preset, over)
    return make


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run single-threaded: OpenMP barriers cost more than they save, badly so on a
    shared, loaded machine (modules opt in with `pytestmark = pytest.mark.usefixtures(...)`)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
