"""Reports: what is written after testing, beside the metrics: the run's files (metrics.json, embeddings.npz,
similarity), and the configured ``reports`` (plots, probe, the leak check). Each report is ``report(trainer=,
model=, datamodule=, output_dir=) -> {name: value}``."""

from simlearn.reports.leaks import LeakReport
from simlearn.reports.outputs import run_reports, write_evaluation, write_metrics, write_test_outputs
from simlearn.reports.plots import PlotsReport
from simlearn.reports.probe import ProbeReport, plot_circle, probe_similarity
from simlearn.reports.similarity import ClassSimilarity, class_similarity

__all__ = [
    "ClassSimilarity",
    "LeakReport",
    "PlotsReport",
    "ProbeReport",
    "class_similarity",
    "plot_circle",
    "probe_similarity",
    "run_reports",
    "write_evaluation",
    "write_metrics",
    "write_test_outputs",
]
