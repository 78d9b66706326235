"""Notebook 04 executed by papermill with parameters (tiny Llama + the synthetic fixture data, so
it runs in seconds); the artefacts it writes and the table it prints are asserted."""
from __future__ import annotations

from pathlib import Path

import nbformat
import papermill as pm
import pytest

from bdlm_lib.runs import read_json
from test_joint import world  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parent.parent
NB = REPO / "notebooks" / "04_joint_training.ipynb"


def test_notebook_04_is_parameterised_and_committed_with_outputs():
    nb = nbformat.read(NB, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and 'method = "bdlm"' in tagged[0].source and 'preset = "smoke"' in tagged[0].source
    assert nb.cells[0].cell_type == "markdown"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert any(o.get("output_type") == "display_data" for c in code for o in c.outputs), "no plot in outputs"


@pytest.mark.notebooks
def test_notebook_04_runs_joint_training(world, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NB), str(out),
                        parameters=dict(dataset=str(world["data"]), preset="smoke", output_dir=str(tmp_path / "o"),
                                        seed=42, run_dir=str(run_dir),
                                        overrides={"llm.backbone": str(world["llm"]), "data.sample_users": None,
                                                   "joint.max_steps": 2, "joint.batch_size": 4,
                                                   "eval.max_users": 6, "sft.max_steps": 1,
                                                   "domain.progress": False}),
                        kernel_name="python3", cwd=str(REPO / "notebooks"), progress_bar=False)
    m = read_json(run_dir / "metrics.json")
    assert m["method"] == "bdlm" and m["llm"]["topk"]["n_users"] == 6
    assert (run_dir / "losses.png").stat().st_size > 1000 and (run_dir / "history.json").exists()
    text = out.read_text()
    for row in ("lightgcn", "BDLM-llm", "BDLM-drs", "HR@1 vs best baseline"):
        assert row in text
