"""Notebooks 05 (baselines), 06 (ablations) and 07 (λ) executed by papermill with parameters, the
way a batch or a user runs them (tiny Llama + the synthetic fixture data, so each trains its several
models in seconds); the tables they record are asserted. nbval leaves these three out (on the real
smoke preset each trains 4-9 models); this is where CI runs them."""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from test_joint import world  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
FAST = {"data.sample_users": None, "joint.max_steps": 2, "joint.batch_size": 4, "eval.max_users": 6,
        "sft.max_steps": 1, "domain.progress": False, "domain.epochs": 2, "baselines.gpt4sm_epochs": 1}


def execute(name: str, world, tmp_path, **extra):  # noqa: F811
    out = tmp_path / "o"
    params = dict(dataset=str(world["data"]), preset="smoke", output_dir=str(out), seed=42,
                  overrides={**FAST, "llm.backbone": str(world["llm"])}, **extra)
    pm.execute_notebook(str(REPO / "notebooks" / name), str(tmp_path / name), parameters=params,
                        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False)
    return out / Path(world["data"]).name


def rows(table_json: Path) -> dict:
    return {r["method"]: r for r in json.loads(table_json.read_text())}


@pytest.mark.notebooks
def test_notebook_05_runs_every_listed_baseline(world, tmp_path):  # noqa: F811
    base = execute("05_baselines.ipynb", world, tmp_path,
                   baselines=["gmf", "lightgcn", "llmrec", "instructrec", "gpt4sm", "lightgcn_ft"])
    table = rows(base / "baselines-smoke" / "table.json")
    assert set(table) == {"GMF", "LightGCN", "LLM-Rec", "InstructRec", "GPT4SM", "LightGCN-FT"}
    for r in table.values():
        assert r["users"] == 6 and 0 <= r["HR@1"] <= r["HR@2"] <= 1 and 0 <= r["F1"] <= 1
    # each method's run folder holds its own metrics, and the table reports exactly those
    m = json.loads(next((base / "baselines-smoke").glob("instructrec*/metrics.json")).read_text())
    assert m["topk"]["HR@1"] == pytest.approx(table["InstructRec"]["HR@1"])


@pytest.mark.notebooks
def test_notebook_06_runs_the_four_variants(world, tmp_path):  # noqa: F811
    base = execute("06_ablations.ipynb", world, tmp_path)
    table = rows(base / "ablations-smoke" / "table.json")
    assert set(table) == {f"{v}-{s}" for v in ("w/o ET", "w/o PE", "w/o JL", "BDLM") for s in ("llm", "drs")}
    assert (base / "ablations-smoke" / "figure5.png").stat().st_size > 1000
    assert all(0 <= r["HR@1"] <= 1 for r in table.values())


@pytest.mark.notebooks
def test_notebook_07_runs_the_lambda_grid(world, tmp_path):  # noqa: F811
    base = execute("07_lambda_analysis.ipynb", world, tmp_path, lambdas=[0.0, 1.0])
    table = json.loads((base / "lambda-smoke" / "table.json").read_text())
    assert set(table) == {"0.0", "1.0"} and all(set(v) == {"llm", "drs"} for v in table.values())
    assert (base / "lambda-smoke" / "figure6.png").stat().st_size > 1000
