"""Evaluation and reports: the study's comparison table, classification reports, predictions CSVs,
example grids, plots and one report.md (see ``evaluate.py``).

    from tinyconv.report import evaluate_runs
    evaluate_runs(["runs/20261127-all"], out=None, thresholds="0.5")   # writes beside the runs
"""
from .evaluate import SYNTHETIC_NOTE, evaluate_runs, score
from .metrics import classification_report
from .runs import ReportError, find_runs
from .thresholds import choose_thresholds

__all__ = ["ReportError", "SYNTHETIC_NOTE", "choose_thresholds", "classification_report", "evaluate_runs",
           "find_runs", "score"]
