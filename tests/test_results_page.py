"""docs/results.md is never stale: it is exactly what `bdlm report --output-dir results --docs ...`
makes from the committed results archive (results/, written by `bdlm archive`), apart from the
date it was generated on."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from bdlm_lib.report import build_report

REPO = Path(__file__).resolve().parent.parent


def _body(page: str) -> str:
    return re.sub(r" on \d{4}-\d{2}-\d{2} from stored runs", " on <date> from stored runs", page, count=1)


def test_results_page_is_what_the_archive_gives(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copyfile(REPO / "docs" / "results_notes.md", docs / "results_notes.md")
    build_report(REPO / "results", report_dir=tmp_path / "report", docs=docs / "results.md")
    made = _body((docs / "results.md").read_text(encoding="utf-8"))
    committed = _body((REPO / "docs" / "results.md").read_text(encoding="utf-8"))
    made = made.replace(f"--docs {docs / 'results.md'}", "--docs docs/results.md")
    assert made == committed, ("docs/results.md differs from what the archive gives: regenerate it with "
                               "`bdlm report --output-dir results --docs docs/results.md`")
    figs = sorted(p.name for p in (docs / "results_figures").glob("*.png"))
    assert figs == sorted(p.name for p in (REPO / "docs" / "results_figures").glob("*.png"))
