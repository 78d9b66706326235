"""What every rank runs in the two-process test (test_distributed.py), under the `deepspeed`
launcher: a joint run stopped after `--stop-after` steps as an interruption would stop it (each
rank writes its ZeRO-3 shard of the checkpoint), then `bdlm joint` with the same parameters, which
resumes that run and finishes it. Rank 0 lists the checkpoint's files in `<output_dir>/ckpt.json`
between the two."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stop-after", type=int, required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--preset", default="smoke")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--local_rank", type=int, default=None)   # the launcher's
    args = ap.parse_args()

    import torch
    from bdlm_lib.cli import main as bdlm
    from bdlm_lib.joint.run import run_bdlm
    from bdlm_lib.joint.trainer import CKPT
    from bdlm_lib.params import load_params, parse_overrides
    params = load_params(args.dataset, args.preset, parse_overrides(args.set))
    m_llm, _, run_dir = run_bdlm(params, progress=False, stop_after=args.stop_after)
    assert m_llm is None, "the run should have stopped early"
    if torch.distributed.get_rank() == 0:
        files = sorted(str(p.relative_to(run_dir)) for d in (CKPT, CKPT + "_ds")
                       for p in (Path(run_dir) / d).rglob("*") if p.is_file())
        (Path(params["output_dir"]) / "ckpt.json").write_text(json.dumps(files))
    torch.distributed.barrier()
    return bdlm(["joint", "--dataset", args.dataset, "--preset", args.preset, "--set", *args.set])


if __name__ == "__main__":
    sys.exit(main())
