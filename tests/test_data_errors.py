"""Bad input: one clear one-line error naming the file or parameter, and no artefact left behind
(the output folder does not exist after the failure)."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from bdlm_lib import load_params
from bdlm_lib.data import DataError, load_dataset
from bdlm_lib.params import ParamsError


def _copy(fixture_dirs, fmt, tmp_path) -> Path:
    dst = tmp_path / f"bad-{fmt}"
    shutil.copytree(fixture_dirs[fmt], dst)
    return dst


def _fails_cleanly(fn, exc, needles, out: Path):
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip(), f"not a one-line message: {msg!r}"
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    assert not out.exists(), f"artefact left behind under {out}"
    return msg


def _prepare(folder, tmp_path, **over):
    out = tmp_path / "out"
    over = {k.replace("__", "."): v for k, v in over.items()}
    p = load_params(str(folder), "smoke", {"output_dir": str(out), "data.sample_users": None, **over})
    return lambda: load_dataset(p, verbose=False), out


def test_missing_file(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "tsv", tmp_path)
    (d / "item_titles.tsv").unlink()
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["item_titles.tsv", "not found"], out)


def test_missing_movies_dat(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "ml1m-gz", tmp_path)
    (d / "movies.dat.gz").unlink()
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["movies.dat", "not found"], out)


def test_wrong_separator_ml1m(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "ml1m", tmp_path)
    (d / "ratings.dat").write_text((d / "ratings.dat").read_text(encoding="latin-1").replace("::", "\t"))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["ratings.dat", "'::'"], out)


def test_wrong_separator_tsv(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "tsv", tmp_path)
    (d / "interactions.tsv").write_text((d / "interactions.tsv").read_text().replace("\t", ","))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["interactions.tsv", "tab-separated"], out)


def test_non_numeric_id(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "ml1m", tmp_path)
    lines = (d / "ratings.dat").read_text(encoding="latin-1").splitlines(True)
    lines[5] = "abc::1::5::978300760\n"
    (d / "ratings.dat").write_text("".join(lines), encoding="latin-1")
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["ratings.dat", "UserID", "'abc'"], out)


def test_non_numeric_timestamp_tsv(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "tsv", tmp_path)
    txt = (d / "interactions.tsv").read_text().splitlines(True)
    u, i, _t, s = txt[3].rstrip("\n").split("\t")
    txt[3] = f"{u}\t{i}\tyesterday\t{s}\n"
    (d / "interactions.tsv").write_text("".join(txt))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["interactions.tsv", "timestamp", "'yesterday'"], out)


def test_empty_titles(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "tsv", tmp_path)
    rows = (d / "item_titles.tsv").read_text().splitlines()[1:]
    (d / "item_titles.tsv").write_text("item_id\ttitle\n" + "".join(f"{r.split(chr(9))[0]}\t\n" for r in rows))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["item_titles.tsv", "non-empty title"], out)


def test_unknown_dataset(tmp_path):
    _fails_cleanly(lambda: load_params("movielens-7m", "smoke"), ParamsError,
                   ["movielens-7m", "not a registered name"], tmp_path / "out")


def test_unknown_param_key(tmp_path):
    _fails_cleanly(lambda: load_params("ml1m", "smoke", {"testset.n_candidate": 20}), ParamsError,
                   ["testset.n_candidate", "did you mean 'testset.n_candidates'"], tmp_path / "out")


def test_mistyped_param_value(tmp_path):
    _fails_cleanly(lambda: load_params("ml1m", "smoke", {"data.kcore": "five"}), ParamsError,
                   ["data.kcore", "integer"], tmp_path / "out")


def test_out_of_range_param_value(tmp_path):
    _fails_cleanly(lambda: load_params("ml1m", "smoke", {"testset.n_candidates": 1}), ParamsError,
                   ["testset.n_candidates", ">= 2"], tmp_path / "out")


def test_unknown_preset(tmp_path):
    _fails_cleanly(lambda: load_params("ml1m", "huge"), ParamsError, ["preset 'huge'", "smoke"],
                   tmp_path / "out")


def test_corrupt_gzip(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "tsv-gz", tmp_path)
    data = (d / "interactions.tsv.gz").read_bytes()
    (d / "interactions.tsv.gz").write_bytes(data[: len(data) // 2])   # truncated download
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["interactions.tsv.gz", "corrupt gzip"], out)


def test_gzip_with_garbage_inside(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "ml1m-gz", tmp_path)
    data = bytearray((d / "ratings.dat.gz").read_bytes())
    data[20:60] = b"\x00" * 40                                          # corrupt deflate stream
    (d / "ratings.dat.gz").write_bytes(bytes(data))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["ratings.dat.gz", "corrupt gzip"], out)


def test_bad_zip(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "ml1m-zip", tmp_path)
    (d / "ml-1m.zip").write_bytes(b"PK\x03\x04 this is not really a zip archive")
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["ml-1m.zip", "zip"], out)


def test_python_literal_line_that_is_not_a_dict(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "amazon2014", tmp_path)
    meta = d / "meta_Health_and_Personal_Care.json.gz"
    lines = gzip.decompress(meta.read_bytes()).decode().splitlines(True)
    lines.insert(2, "['B000123', 'a list, not a record']\n")
    meta.write_bytes(gzip.compress("".join(lines).encode()))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["meta_Health_and_Personal_Care.json.gz", "line 3", "not a dict"], out)


def test_amazon2018_line_that_is_not_json(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "amazon2018", tmp_path)
    rev = d / "Grocery_and_Gourmet_Food_5.json.gz"
    lines = gzip.decompress(rev.read_bytes()).decode().splitlines(True)
    lines[1] = "{'reviewerID': '1', 'asin': '2', 'unixReviewTime': 5}\n"   # a 2014-style literal
    rev.write_bytes(gzip.compress("".join(lines).encode()))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["Grocery_and_Gourmet_Food_5.json.gz", "line 2", "JSON"], out)


def test_review_without_required_fields(fixture_dirs, tmp_path):
    d = _copy(fixture_dirs, "amazon2014", tmp_path)
    rev = d / "reviews_Health_and_Personal_Care_5.json.gz"
    rev.write_bytes(gzip.compress(gzip.decompress(rev.read_bytes()) + b"{'asin': '1'}\n"))
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, ["reviews_Health_and_Personal_Care_5.json.gz", "reviewerID"], out)


def test_kcore_leaving_nothing(fixture_dirs, tmp_path):
    fn, out = _prepare(fixture_dirs["tsv"], tmp_path, data__kcore=50)
    _fails_cleanly(fn, DataError, ["nothing left", "data.kcore=50"], out)


def test_too_many_candidates_for_the_items(fixture_dirs, tmp_path):
    fn, out = _prepare(fixture_dirs["tsv"], tmp_path, testset__n_candidates=40)
    _fails_cleanly(fn, DataError, ["testset.n_candidates=40"], out)


def test_folder_without_dataset_files(tmp_path):
    d = tmp_path / "empty-ds"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    fn, out = _prepare(d, tmp_path)
    _fails_cleanly(fn, DataError, [str(d), "no known dataset files"], out)


def test_unknown_format_param(fixture_dirs, tmp_path):
    _fails_cleanly(lambda: load_params(str(fixture_dirs["tsv"]), "smoke", {"data.format": "csv"}),
                   ParamsError, ["data.format", "'csv'"], tmp_path / "out")


def test_wrong_format_for_the_folder(fixture_dirs, tmp_path):
    fn, out = _prepare(fixture_dirs["tsv"], tmp_path, data__format="ml1m")
    _fails_cleanly(fn, DataError, ["ratings.dat", "not found"], out)


def test_missing_registered_data_without_download(tmp_path):
    out = tmp_path / "out"
    p = load_params("ml1m", "smoke", {"output_dir": str(out), "data_dir": str(tmp_path / "nodata"),
                                      "data.download": False})
    _fails_cleanly(lambda: load_dataset(p, verbose=False), DataError,
                   ["movielens-1m", "data.download is false"], out)
    assert not (tmp_path / "nodata").exists()


def test_bad_yaml_in_a_layer(tmp_path):
    pdir = tmp_path / "params"
    shutil.copytree(Path(__file__).resolve().parents[1] / "params", pdir)
    (pdir / "presets" / "smoke.yaml").write_text("data:\n  kcore: [unclosed\n")
    _fails_cleanly(lambda: load_params("ml1m", "smoke", params_dir=pdir), ParamsError,
                   ["smoke.yaml", "YAML"], tmp_path / "out")
