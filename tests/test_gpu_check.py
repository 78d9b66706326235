"""The GPU check (benchmarks/bench_gpu_check.py) runs its every row on a CPU with --tiny, and
writes the step costs `bdlm plan --costs` reads."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_tiny_and_feeds_the_plan(tmp_path):
    from bdlm_lib import plan
    out = tmp_path / "gpu_check.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu_check.py"), "--tiny",
                        "--steps", "1", "--out", str(out)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"full_sft", "full_sft_max", "full_sft_bf16", "lora", "lora_max", "joint"} <= set(res)
    assert res["full_sft_max"]["batch"] > res["full_sft"]["batch"] and res["joint"]["tokens_per_s"] > 0
    assert "target: full SFT at 40% MFU" in r.stdout
    assert plan.read_costs(out)["full"] == res["full_sft"]["mfu"] > 0
