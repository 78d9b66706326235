"""Readers for the supported raw formats, plain or gzip. Each returns two frames:

    interactions: user_raw (str), item_raw (str), timestamp (int64), in file order
    titles:       item_raw (str), title (str, HTML-unescaped)

Formats: MovieLens-1M (`ratings.dat` + `movies.dat`, `::`, ISO-8859-1, or `ml-1m.zip`); Amazon
2014 raw (`reviews_<Cat>_5.json.gz` + `meta_<Cat>.json.gz`, Python-literal lines read with
`ast.literal_eval`); Amazon 2018 raw (strict JSON lines); and the generic pair
`interactions.tsv(.gz)` + `item_titles.tsv(.gz)`. Every error is one line naming the file.
"""
from __future__ import annotations

import ast
import gzip
import html
import io
import json
import zipfile
from pathlib import Path

import pandas as pd


class DataError(ValueError):
    """Bad or missing input data; the message names the file."""


def find_file(folder: Path, *names: str) -> Path | None:
    """First existing `name` or `name.gz` in `folder`."""
    for name in names:
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.is_file():
                return cand
    return None


def _open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from None
    return io.StringIO(raw.decode(encoding, errors="strict"))


def _clean_titles(titles: pd.DataFrame, path: Path) -> pd.DataFrame:
    titles = titles.copy()
    titles["item_raw"] = titles["item_raw"].astype(str)
    titles["title"] = titles["title"].fillna("").astype(str).map(html.unescape).str.strip()
    titles = titles.drop_duplicates("item_raw", keep="first")
    if len(titles) == 0 or (titles["title"] == "").all():
        raise DataError(f"{path}: no item has a non-empty title")
    return titles.reset_index(drop=True)


def _require_int(series: pd.Series, what: str, path: Path) -> pd.Series:
    num = pd.to_numeric(series, errors="coerce")
    if num.isna().any():
        bad = series[num.isna()].iloc[0]
        raise DataError(f"{path}: non-numeric {what} {bad!r}")
    return num.astype("int64")


# ---------------------------------------------------------------- MovieLens-1M
def read_ml1m(folder: Path, title_extras: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = Path(folder)
    zpath = folder / "ml-1m.zip"
    if find_file(folder, "ratings.dat") is None and zpath.is_file():
        return _read_ml1m_zip(zpath, title_extras)
    rpath = find_file(folder, "ratings.dat")
    mpath = find_file(folder, "movies.dat")
    if rpath is None:
        raise DataError(f"{folder / 'ratings.dat'}: file not found (nor .gz, nor ml-1m.zip)")
    if mpath is None:
        raise DataError(f"{folder / 'movies.dat'}: file not found (nor .gz)")
    return _parse_ml1m(_open_text(rpath, "latin-1"), rpath, _open_text(mpath, "latin-1"), mpath,
                       title_extras)


def _read_ml1m_zip(zpath: Path, title_extras: bool):
    try:
        with zipfile.ZipFile(zpath) as z:
            names = {Path(n).name: n for n in z.namelist()}
            if "ratings.dat" not in names or "movies.dat" not in names:
                raise DataError(f"{zpath}: archive lacks ml-1m/ratings.dat or ml-1m/movies.dat")
            r = io.StringIO(z.read(names["ratings.dat"]).decode("latin-1"))
            m = io.StringIO(z.read(names["movies.dat"]).decode("latin-1"))
    except zipfile.BadZipFile:
        raise DataError(f"{zpath}: not a zip archive") from None
    return _parse_ml1m(r, zpath, m, zpath, title_extras)


def _parse_ml1m(rtext, rpath, mtext, mpath, title_extras):
    # '::' as a regex separator forces pandas' slow Python engine; splitting on ':' with the C
    # engine and keeping every other column is ~10x faster for the 1M ratings.
    first = rtext.readline()
    rtext.seek(0)
    if "::" not in first:
        raise DataError(f"{rpath}: expected '::'-separated UserID::MovieID::Rating::Timestamp lines")
    try:
        r = pd.read_csv(rtext, sep=":", header=None, usecols=[0, 2, 4, 6], dtype=str,
                        engine="c", na_filter=False)
    except (pd.errors.ParserError, ValueError) as e:
        raise DataError(f"{rpath}: malformed ratings line ({str(e).splitlines()[0]})") from None
    r.columns = ["user_raw", "item_raw", "rating", "timestamp"]
    inter = pd.DataFrame({
        "user_raw": _require_int(r["user_raw"], "UserID", rpath).astype(str),
        "item_raw": _require_int(r["item_raw"], "MovieID", rpath).astype(str),
        "timestamp": _require_int(r["timestamp"], "timestamp", rpath),
    })
    rows = []
    for ln, line in enumerate(mtext, 1):
        line = line.rstrip("\n\r")
        if not line:
            continue
        parts = line.split("::")
        if len(parts) != 3:
            raise DataError(f"{mpath}: line {ln} is not MovieID::Title::Genres")
        mid, title, genres = parts
        if not mid.strip().isdigit():
            raise DataError(f"{mpath}: line {ln}: non-numeric MovieID {mid!r}")
        if title_extras:
            title = f"{title} [{genres.replace('|', ', ')}]"
        rows.append((str(int(mid)), title, genres))
    titles = pd.DataFrame(rows, columns=["item_raw", "title", "genres"])
    return inter, _clean_titles(titles, mpath)


# ---------------------------------------------------------------- generic TSV pair
def read_tsv_pair(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = Path(folder)
    ipath = find_file(folder, "interactions.tsv")
    tpath = find_file(folder, "item_titles.tsv")
    if ipath is None:
        raise DataError(f"{folder / 'interactions.tsv'}: file not found (nor .gz)")
    if tpath is None:
        raise DataError(f"{folder / 'item_titles.tsv'}: file not found (nor .gz)")
    inter = pd.read_csv(_open_text(ipath), sep="\t", dtype=str, na_filter=False)
    need = {"user_id", "item_id", "timestamp"}
    if not need <= set(inter.columns):
        hint = " (is it tab-separated?)" if len(inter.columns) == 1 else ""
        raise DataError(f"{ipath}: needs columns user_id, item_id, timestamp; "
                        f"found {', '.join(map(str, inter.columns))[:80]}{hint}")
    out = pd.DataFrame({
        "user_raw": inter["user_id"].astype(str),
        "item_raw": inter["item_id"].astype(str),
        "timestamp": _require_int(inter["timestamp"], "timestamp", ipath),
    })
    if "seq_pos" in inter:
        # keep the processor's within-day order: sort by (user, timestamp, seq_pos) later is stable
        out["seq"] = _require_int(inter["seq_pos"], "seq_pos", ipath)
    titles = pd.read_csv(_open_text(tpath), sep="\t", dtype=str, na_filter=False, quoting=3)
    if not {"item_id", "title"} <= set(titles.columns):
        raise DataError(f"{tpath}: needs columns item_id, title; found "
                        f"{', '.join(map(str, titles.columns))[:80]}")
    titles = titles.rename(columns={"item_id": "item_raw"})[["item_raw", "title"]]
    return out, _clean_titles(titles, tpath)


# ---------------------------------------------------------------- Amazon raw (2014 and 2018)
def _json_lines(path: Path, literal: bool):
    with _open_text(path) as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                # 2014 files are Python dict literals (single quotes): literal_eval, never eval
                yield ast.literal_eval(line) if literal else json.loads(line)
            except (ValueError, SyntaxError):
                try:
                    yield json.loads(line) if literal else ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise DataError(f"{path}: line {ln} is neither JSON nor a Python literal") from None


def read_amazon(folder: Path, category: str | None = None, version: int = 2014):
    """`reviews_<Cat>_5.json.gz` + `meta_<Cat>.json.gz` (2014) or `<Cat>_5.json.gz` + `meta_<Cat>.json.gz` (2018)."""
    folder = Path(folder)
    pattern = "reviews_*_5.json*" if version == 2014 else "*_5.json*"
    if category:
        rname = f"reviews_{category}_5.json" if version == 2014 else f"{category}_5.json"
        rpath = find_file(folder, rname)
    else:
        cands = sorted(p for p in folder.glob(pattern) if not p.name.startswith("meta_"))
        rpath = cands[0] if cands else None
    if rpath is None:
        raise DataError(f"{folder / (pattern.replace('*_5', (category or '<Category>') + '_5'))}: file not found")
    cat = category or rpath.name.split(".json")[0].removeprefix("reviews_").removesuffix("_5")
    mpath = find_file(folder, f"meta_{cat}.json")
    if mpath is None:
        raise DataError(f"{folder / f'meta_{cat}.json.gz'}: file not found")
    rows = []
    for rec in _json_lines(rpath, literal=(version == 2014)):
        try:
            rows.append((str(rec["reviewerID"]), str(rec["asin"]), int(rec["unixReviewTime"])))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{rpath}: a review lacks reviewerID/asin/unixReviewTime") from None
    if not rows:
        raise DataError(f"{rpath}: no reviews")
    inter = pd.DataFrame(rows, columns=["user_raw", "item_raw", "timestamp"])
    trows = []
    for rec in _json_lines(mpath, literal=(version == 2014)):
        if "asin" in rec:
            trows.append((str(rec["asin"]), str(rec.get("title") or "")))
    titles = pd.DataFrame(trows, columns=["item_raw", "title"])
    return inter, _clean_titles(titles, mpath)


def read_raw(folder: Path, fmt: str, title_extras: bool = False):
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset folder not found")
    if fmt == "ml1m":
        return read_ml1m(folder, title_extras)
    if fmt == "tsv":
        return read_tsv_pair(folder)
    if fmt == "amazon2014":
        return read_amazon(folder, version=2014)
    if fmt == "amazon2018":
        return read_amazon(folder, version=2018)
    raise DataError(f"data.format: unknown format {fmt!r} (ml1m, tsv, amazon2014, amazon2018)")


def detect_format(folder: Path) -> str:
    folder = Path(folder)
    if find_file(folder, "ratings.dat") or (folder / "ml-1m.zip").is_file():
        return "ml1m"
    if find_file(folder, "interactions.tsv"):
        return "tsv"
    if list(folder.glob("reviews_*_5.json*")):
        return "amazon2014"
    if list(folder.glob("*_5.json*")):
        return "amazon2018"
    raise DataError(f"{folder}: no known dataset files (ratings.dat, interactions.tsv, reviews_*_5.json.gz, *_5.json.gz)")

