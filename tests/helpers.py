"""Shared test helpers: compose a config as the CLI would and run it in-process."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import numpy as np
from PIL import Image

from simlearn.build import build_datamodule, build_model
from simlearn.config import compose_config
from simlearn.evaluation import retrieval_metrics
from simlearn.inference import embed
from simlearn.train import train

REPO = Path(__file__).resolve().parents[1]


def train_config(output_dir: Path, *overrides: str):
    """The CLI's config for a quiet, fast run: no logger, no plots (tests/test_reports_plots.py covers them)."""
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


def run_main(module: str, *args: str, capfd, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` inside this test process: the same ``main()`` and Hydra code path as
    :func:`run_cli`, without the 8-10 s a new process spends importing torch and Lightning. For the many checks of a
    command's one-line errors; each command keeps tests that start the real process.

    Hydra configures the root logger for the run (handlers writing into its run dir): restored afterwards, as is the
    Hydra run state, so that later tests of this process see none of it.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    main = importlib.import_module(module).main
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    argv = [module, *args]
    capfd.readouterr()  # only this command's output below
    try:
        with mock.patch.object(sys, "argv", argv), mock.patch.dict(os.environ, env or {}):
            main()
        code = 0
    except SystemExit as exit_:
        # as the interpreter maps it: sys.exit() is 0, an integer itself, anything else (a message) 1
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], root.level = handlers, level
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def clustered(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping class clusters, so that neighbours disagree and votes tie now and then."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, dim))
    return (centres[labels] + 1.2 * rng.normal(size=(n, dim))).astype(np.float32), labels


def export_cfg(ckpt, out, run_dir, *overrides):
    """simlearn-export's config: ``ckpt`` as a model folder (format=hf) at ``out``."""
    return compose_config([f"ckpt_path={ckpt}", "format=hf", f"out={out}", *overrides], "export", run_dir)


def save_digit(path, image: np.ndarray) -> None:
    """A digit of scikit-learn's digits (8×8, 0-16) as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((image / 16 * 255).round().astype(np.uint8)).save(path)


def folder_search_config(trained, out, *overrides):
    """simlearn-search's config for the ``checkpoint_folders`` fixture (tests/conftest.py): its checkpoint, queries
    and gallery folder."""
    return compose_config(
        [
            f"ckpt_path={trained['ckpt']}",
            f"query={trained['query']}",
            f"gallery={trained['gallery']}",
            f"paths.log_dir={trained['root'] / 'outputs'}",
            "device=cpu",
            *overrides,
        ],
        config_name="search",
        output_dir=out,
    )
