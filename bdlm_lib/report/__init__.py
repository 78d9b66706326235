"""The report: collect stored runs, their statistics, tables and figures, and the writer."""
from .collect import collect_runs, load_predictions
from .records import per_user
from .statistics import paired_test
from .tables import to_markdown
from .writer import build_report

__all__ = ["build_report", "collect_runs", "load_predictions", "paired_test", "per_user", "to_markdown"]
