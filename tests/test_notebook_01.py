"""Notebook 01 executed by papermill with parameters; the values it records are asserted."""
from pathlib import Path

import papermill as pm
import pytest

from bdlm_lib.runs import read_json

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.notebooks
def test_data_prep_notebook_records_table1(tmp_path):
    run_dir = tmp_path / "run"
    pm.execute_notebook(str(REPO / "notebooks" / "01_data_prep.ipynb"), str(tmp_path / "out.ipynb"),
                        parameters=dict(dataset="amazon-beauty", preset="smoke", output_dir=str(tmp_path),
                                        seed=7, run_dir=str(run_dir)),
                        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False)
    metrics = read_json(run_dir / "metrics.json")
    stats = metrics["stats"]
    # smoke samples 150 of the 5-core's users (all their interactions): each has >= 5
    assert stats["users"] == 150
    assert stats["interactions"] >= 5 * stats["users"]
    assert 0 < stats["items"] <= 12_086            # Amazon Beauty's 5-core has 12,086 items
    assert stats["sparsity"] == pytest.approx(1 - stats["interactions"] / (stats["users"] * stats["items"]))
    assert (run_dir / "params.yaml").exists() and (run_dir / "interactions_hist.png").stat().st_size > 1000
    assert "amazon-beauty" in metrics["data_path"] and "s7" in metrics["data_path"]
