"""Loaders: every supported raw layout, written by the fixtures, reads back to the same data."""
from __future__ import annotations

import pandas as pd
import pytest

from bdlm_lib.data import load_dataset
from bdlm_lib.data.loaders import detect_format, read_raw
from conftest import DUP_ITEM, DUP_USER, FORMATS, UNTITLED_ITEM

EXPECTED_FORMAT = {"ml1m": "ml1m", "ml1m-gz": "ml1m", "ml1m-zip": "ml1m", "amazon2014": "amazon2014",
                   "amazon2018": "amazon2018", "tsv": "tsv", "tsv-gz": "tsv"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_returns_every_row_and_unescaped_titles(fmt, fixture_dirs, raw_data):
    folder = fixture_dirs[fmt]
    assert detect_format(folder) == EXPECTED_FORMAT[fmt]
    inter, titles = read_raw(folder, detect_format(folder))
    want = pd.DataFrame(raw_data["interactions"], columns=["user_raw", "item_raw", "timestamp"])
    # every row, in file order, ids as strings, timestamps as int64
    assert inter["user_raw"].tolist() == want["user_raw"].astype(str).tolist()
    assert inter["item_raw"].tolist() == want["item_raw"].astype(str).tolist()
    assert inter["timestamp"].tolist() == want["timestamp"].tolist()
    assert inter["timestamp"].dtype == "int64"
    t = dict(zip(titles["item_raw"], titles["title"]))
    assert t["3"] == "Kid's Soap & Lotion (1995)"           # HTML entity unescaped
    assert t["4"] == "Amélie Green Tea (1996)"               # ISO-8859-1 / UTF-8 decoded right
    assert t.get(str(UNTITLED_ITEM), "") == ""                # no title anywhere


def test_every_format_gives_the_same_prepared_dataset(fixture_dirs, make_params):
    """ML-1M dat/gz/zip, Amazon 2014/2018 and TSV hold the same data: same splits and titles."""
    ref = None
    for fmt in FORMATS:
        ds = load_dataset(make_params(fixture_dirs[fmt], output_dir=str(fixture_dirs[fmt].parent / f"out-{fmt}")),
                          verbose=False)
        assert ds.manifest["format"] == EXPECTED_FORMAT[fmt]
        got = (ds.train, ds.valid, ds.test, ds.users, ds.items[["item", "raw_id", "title"]])
        if ref is None:
            ref = got
            continue
        for a, b in zip(ref, got):
            pd.testing.assert_frame_equal(a, b)
    train, valid, test, users, items = ref
    assert len(users) == 39 and len(items) == 43   # hand-checked on the fixture (see conftest)


def test_duplicates_keep_the_earliest(fixture_dirs, make_params):
    ds = load_dataset(make_params(fixture_dirs["tsv"]), verbose=False)
    u = int(ds.users.loc[ds.users["raw_id"] == str(DUP_USER), "user"].iloc[0])
    i = int(ds.items.loc[ds.items["raw_id"] == str(DUP_ITEM), "item"].iloc[0])
    rows = pd.concat([ds.train, ds.valid, ds.test])
    rows = rows[(rows["user"] == u) & (rows["item"] == i)]
    assert rows["timestamp"].tolist() == [978300000 - 5]


def test_title_extras_appends_genres(fixture_dirs):
    _, titles = read_raw(fixture_dirs["ml1m"], "ml1m", title_extras=True)
    assert titles["title"].iloc[0].endswith("[Comedy, Drama]")
    assert "genres" in titles


def test_amazon2014_meta_is_read_with_literal_eval_never_eval(tmp_path, fixture_dirs):
    """A meta line holding a call is not a literal: it must be refused, never executed."""
    import gzip
    import shutil
    folder = tmp_path / "evil"
    shutil.copytree(fixture_dirs["amazon2014"], folder)
    marker = tmp_path / "pwned"
    line = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')\n"
    meta = folder / "meta_Health_and_Personal_Care.json.gz"
    meta.write_bytes(gzip.compress(gzip.decompress(meta.read_bytes()) + line.encode()))
    from bdlm_lib.data import DataError
    with pytest.raises(DataError, match="meta_Health_and_Personal_Care.json.gz: line"):
        read_raw(folder, "amazon2014")
    assert not marker.exists()


def test_quoted_tsv_titles_with_tabs_and_newlines(tmp_path):
    """The real item_titles.tsv quote titles holding a tab or a newline (pandas to_csv style)."""
    folder = tmp_path / "q"
    folder.mkdir()
    rows = "".join(f"u{u}\ti{i}\t{100 + i}\n" for u in range(3) for i in range(4))
    (folder / "interactions.tsv").write_text("user_id\titem_id\ttimestamp\n" + rows)
    (folder / "item_titles.tsv").write_text(
        'item_id\ttitle\ni0\t"Tab\tinside"\ni1\t"two\nlines"\ni2\tsay &quot;hi&quot;\ni3\tplain\n')
    inter, titles = read_raw(folder, "tsv")
    assert titles["title"].tolist() == ["Tab inside", "two lines", 'say "hi"', "plain"]
    assert len(inter) == 12
