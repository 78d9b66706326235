"""Downloads against a real local HTTP server (http.server on 127.0.0.1, a free port): a good
download appears and loads; a checksum mismatch, a 404 or an unreachable host leaves nothing."""
from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
from pathlib import Path

import pytest

from bdlm_lib import load_params
from bdlm_lib.data import DataError, load_dataset
from bdlm_lib.data.download import fetch
from bdlm_lib.data.registry import REGISTRY


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def server(fixture_dirs, tmp_path_factory):
    """Serves the fixture ml-1m.zip and Amazon 2014 files (under the Grocery names)."""
    root = tmp_path_factory.mktemp("www")
    shutil.copy(fixture_dirs["ml1m-zip"] / "ml-1m.zip", root / "ml-1m.zip")
    src = fixture_dirs["amazon2014"]
    shutil.copy(src / "reviews_Health_and_Personal_Care_5.json.gz", root / "reviews_Grocery_and_Gourmet_Food_5.json.gz")
    shutil.copy(src / "meta_Health_and_Personal_Care.json.gz", root / "meta_Grocery_and_Gourmet_Food.json.gz")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def _params(tmp_path, name):
    return load_params(name, "smoke", {"output_dir": str(tmp_path / "out"), "data_dir": str(tmp_path / "data"),
                                       "data.sample_users": None})


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _leftovers(folder: Path):
    return [p.name for p in folder.rglob("*") if p.name.startswith(".")] if folder.exists() else []


def test_good_download_appears_and_loads(server, tmp_path):
    base, root = server
    spec = REGISTRY["ml1m"].with_downloads(
        [(f"{base}/ml-1m.zip", "ml-1m.zip", "sha256:" + _sha256(root / "ml-1m.zip"))])
    ds = load_dataset(_params(tmp_path, "ml1m"), verbose=False, spec=spec)
    got = tmp_path / "data" / "movielens-1m" / "ml-1m.zip"
    assert got.read_bytes() == (root / "ml-1m.zip").read_bytes()
    assert _leftovers(tmp_path / "data") == []
    assert ds.stats["users"] == 39 and ds.stats["items"] == 43 and ds.noun == "movies"
    assert ds.manifest["inputs_sha256"] == {"ml-1m.zip": _sha256(root / "ml-1m.zip")}
    # a second load finds the file and does not download again (server not needed)
    assert load_dataset(_params(tmp_path, "ml1m"), verbose=False).path == ds.path


def test_base_url_override_for_amazon_json_gz(server, tmp_path):
    base, _ = server
    spec = REGISTRY["amazon-grocery"].with_base_url(base + "/")
    assert all(url.startswith(base + "/") for url, _, _ in spec.downloads)
    ds = load_dataset(_params(tmp_path, "amazon-grocery"), verbose=False, spec=spec)
    assert ds.manifest["format"] == "amazon2014" and ds.noun == "products"
    assert sorted(p.name for p in (tmp_path / "data" / "amazon-grocery").iterdir()) == [
        "meta_Grocery_and_Gourmet_Food.json.gz", "reviews_Grocery_and_Gourmet_Food_5.json.gz"]
    assert REGISTRY["amazon-grocery"].downloads[0][0].startswith("http://snap.stanford.edu")  # untouched


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, _ = server
    spec = REGISTRY["ml1m"].with_base_url(base)   # keeps GroupLens' md5: the fixture zip differs
    with pytest.raises(DataError) as info:
        load_dataset(_params(tmp_path, "ml1m"), verbose=False, spec=spec)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "ml-1m.zip" in msg and "\n" not in msg
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_partial_set_is_not_kept(server, tmp_path):
    """The reviews file downloads, the meta file 404s: the reviews file must not stay."""
    base, _ = server
    spec = REGISTRY["amazon-grocery"].with_downloads([
        (f"{base}/reviews_Grocery_and_Gourmet_Food_5.json.gz", "reviews_Grocery_and_Gourmet_Food_5.json.gz", None),
        (f"{base}/missing.json.gz", "meta_Grocery_and_Gourmet_Food.json.gz", None)])
    with pytest.raises(DataError, match="missing.json.gz: download failed") as info:
        load_dataset(_params(tmp_path, "amazon-grocery"), verbose=False, spec=spec)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_unreachable_url_is_a_one_line_error(tmp_path):
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = REGISTRY["ml1m"].with_base_url(f"http://127.0.0.1:{port}")
    with pytest.raises(DataError) as info:
        load_dataset(_params(tmp_path, "ml1m"), verbose=False, spec=spec)
    msg = str(info.value)
    assert "\n" not in msg and f"127.0.0.1:{port}/ml-1m.zip: download failed" in msg
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_fetch_into_an_existing_folder_keeps_it(server, tmp_path):
    base, root = server
    keep = tmp_path / "dl"
    keep.mkdir()
    (keep / "other.txt").write_text("mine")
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch(f"{base}/ml-1m.zip", keep / "ml-1m.zip", "0" * 64)   # bare sha256
    assert sorted(p.name for p in keep.iterdir()) == ["other.txt"]
    fetch(f"{base}/ml-1m.zip", keep / "ml-1m.zip", "md5:" + hashlib.md5((root / "ml-1m.zip").read_bytes()).hexdigest())
    assert (keep / "ml-1m.zip").stat().st_size == (root / "ml-1m.zip").stat().st_size
    with pytest.raises(DataError, match="unknown checksum algorithm"):
        fetch(f"{base}/ml-1m.zip", keep / "x.zip", "crc99:abc")
