"""Shared test helpers: compose a config as the CLI would and run it in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl

from simlearn.build import build_datamodule, build_model
from simlearn.config import compose_config
from simlearn.evaluation import retrieval_metrics
from simlearn.inference import embed
from simlearn.train import train

REPO = Path(__file__).resolve().parents[1]


def train_config(output_dir: Path, *overrides: str):
    """The CLI's config for a quiet, fast run: no logger, no plots (tests/test_plots.py covers them)."""
    return compose_config(["logger=none", "reports.plots=null", *overrides], output_dir=output_dir)


def run_training(output_dir: Path, *overrides: str) -> dict[str, float]:
    return train(train_config(output_dir, *overrides))


def untrained_metrics(cfg) -> dict[str, float]:
    """Retrieval metrics of the freshly initialised model on the test split (the baseline training must beat)."""
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = build_datamodule(cfg.data)
    model = build_model(cfg, datamodule).eval()
    result = embed(model.encoder, datamodule.test_dataloader())
    return retrieval_metrics(result.embeddings, result.fields[cfg.data.label_field])


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command-line entry point the way a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
