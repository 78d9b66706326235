"""Layered params: base <- datasets/<name> <- presets/<preset> <- overrides, validated on load."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from bdlm_lib.params import ParamsError, load_params, save_params

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.mark.parametrize("dataset", ["ml1m", "amazon-health", "amazon-beauty", "amazon-grocery"])
@pytest.mark.parametrize("preset", ["smoke", "demo", "cpu", "paper"])
def test_every_shipped_combination_loads(dataset, preset):
    p = load_params(dataset, preset)
    assert p.dataset == dataset and p.preset == preset
    assert p.data.noun == ("movies" if dataset == "ml1m" else "products")
    assert p["testset"]["n_candidates"] == 20 and p.data.kcore == 5


def test_layer_precedence(tmp_path):
    pdir = tmp_path / "params"
    shutil.copytree(PARAMS, pdir)
    (pdir / "presets" / "mine.yaml").write_text("seed: 2\ndata:\n  kcore: 4\n")
    base = yaml.safe_load((pdir / "base.yaml").read_text())
    p = load_params("ml1m", "mine", params_dir=pdir)
    assert p.seed == 2 and p.data.kcore == 4 and p.data.noun == "movies"   # preset over base
    (pdir / "datasets" / "ml1m.yaml").write_text("seed: 1\ndata:\n  kcore: 3\n  noun: toys\n")
    p = load_params("ml1m", "mine", params_dir=pdir)
    assert p.seed == 2 and p.data.kcore == 4 and p.data.noun == "toys"   # preset over dataset
    p = load_params("ml1m", "mine", {"data.kcore": 7, "domain": {"epochs": 9}}, params_dir=pdir)
    assert p.data.kcore == 7 and p.domain.epochs == 9                # overrides over everything
    assert p.domain.lr == base["domain"]["lr"]                      # untouched keys from base
    assert p.get_dotted("data.noun") == "toys" and p.to_dict()["data"]["kcore"] == 7


def test_a_dataset_can_adjust_a_preset_for_itself(tmp_path):
    pdir = tmp_path / "params"
    shutil.copytree(PARAMS, pdir)
    (pdir / "datasets" / "ml1m.yaml").write_text(
        "data:\n  noun: toys\npresets:\n  cpu:\n    data:\n      sample_users: 7\n      top_items: 9\n")
    p = load_params("ml1m", "cpu", params_dir=pdir)
    assert p.data.sample_users == 7 and p.data.top_items == 9 and p.data.noun == "toys"  # over the preset
    p = load_params("ml1m", "smoke", params_dir=pdir)                 # another preset: untouched
    assert p.data.sample_users == 150 and p.data.top_items is None
    assert load_params("ml1m", "cpu", {"data.top_items": None}, params_dir=pdir).data.top_items is None
    (pdir / "datasets" / "ml1m.yaml").write_text("presets:\n  cpu:\n    data:\n      top_item: 9\n")
    with pytest.raises(ParamsError, match=r"ml1m\.yaml \(presets\.cpu\): unknown parameter 'data\.top_item'"):
        load_params("ml1m", "cpu", params_dir=pdir)
    (pdir / "datasets" / "ml1m.yaml").write_text("presets:\n  cpu: 3\n")
    with pytest.raises(ParamsError, match=r"'presets\.cpu' must be a mapping"):
        load_params("ml1m", "cpu", params_dir=pdir)
    # as shipped: the Amazon sets' cpu preset is the dense top-items subset, ML-1M's a user sample
    assert load_params("amazon-beauty", "cpu").data.top_items == 2000
    assert load_params("ml1m", "cpu").data.top_items is None


def test_types_are_checked_and_coerced():
    assert load_params("ml1m", "smoke", {"sft.lr": "1e-3"}).sft.lr == pytest.approx(1e-3)  # YAML quirk
    assert isinstance(load_params("ml1m", "smoke", {"sft.lr": 1}).sft.lr, float)
    for key, bad in [("domain.epochs", 2.5), ("domain.epochs", True), ("llm.extend_tokens", "yes"),
                     ("domain.mlp_layers", 64), ("domain.model", 3), ("sft.lr", "fast")]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            load_params("ml1m", "smoke", {key: bad})


def test_unknown_keys_fail_naming_the_key(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown parameter 'domain\.epoch'.*'domain\.epochs'"):
        load_params("ml1m", "smoke", {"domain.epoch": 3})
    pdir = tmp_path / "params"
    shutil.copytree(PARAMS, pdir)
    (pdir / "presets" / "smoke.yaml").write_text("data:\n  k_core: 5\n")
    with pytest.raises(ParamsError, match=r"smoke\.yaml: unknown parameter 'data\.k_core'"):
        load_params("ml1m", "smoke", params_dir=pdir)


def test_ranges_presets_and_datasets():
    for key, bad in [("data.kcore", 0), ("data.sample_users", 0), ("data.top_items", 0),
                     ("seed", -1),
                     ("testset.n_binary_neg", 0), ("eval.max_users", 0), ("eval.topk_users", 0),
                     ("joint.domain_negatives", -1)]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            load_params("ml1m", "smoke", {key: bad})
    with pytest.raises(ParamsError, match="preset 'tiny'"):
        load_params("ml1m", "tiny")
    with pytest.raises(ParamsError, match="dataset 'nope'"):
        load_params("nope", "smoke")


def test_a_folder_dataset_gets_no_registered_layer(tmp_path):
    folder = tmp_path / "ml1m"        # named like a registered dataset, but a path
    folder.mkdir()
    p = load_params(str(folder), "smoke")
    assert p.data.noun is None and p.dataset == str(folder)


def test_save_params_round_trip(tmp_path):
    p = load_params("amazon-health", "demo", {"seed": 3})
    save_params(p, tmp_path / "params.yaml")
    back = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert back == p.to_dict()
    assert load_params(back["dataset"], back["preset"], {k: v for k, v in back.items()
                                                         if k not in ("dataset", "preset")}) == p


def test_keys_added_after_runs_were_stored_default_to_their_neutral_values():
    # store.LATER_KEYS gives a stored run, made before a key existed, the value that key has by
    # default: if base.yaml's default moved away from it, old runs would change identity silently
    from bdlm_lib.store import LATER_KEYS
    base = yaml.safe_load((PARAMS / "base.yaml").read_text())
    for key, value in LATER_KEYS.items():
        section, name = key.split(".")
        assert base[section][name] == value, key
