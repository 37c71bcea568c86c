"""simlearn: metric learning for image similarity (Hydra configs, Lightning training, exact retrieval metrics)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from simlearn.build import Run
    from simlearn.inference import InferenceModel

__version__ = "0.1.0"

__all__ = ["__version__", "load", "run"]


def load(path: str | os.PathLike, device: str = "cpu") -> InferenceModel:
    """The inference model of a folder written by ``simlearn-export format=hf`` or of a training checkpoint, ready
    to embed images: ``simlearn.load(folder).embed(["a.png", "b.png"])`` gives their unit-length float32 embeddings.
    See :class:`simlearn.inference.InferenceModel`."""
    from simlearn.inference import load_model  # torch & co. only when used: `import simlearn` stays cheap

    return load_model(path, device)


def run(overrides: Sequence[str] | DictConfig = (), output_dir: str | os.PathLike | None = None) -> Run:
    """Train and test from Python (a notebook, a script; no Hydra run needed) as ``python train.py *overrides``
    does, through the same code (:func:`simlearn.train.train_run`): compose ``configs/train.yaml`` with the
    ``key=value`` overrides (or take a config composed by :func:`simlearn.config.compose_config`, left unchanged),
    fill every placeholder, build the data, model and trainer, train, test the best checkpoint and write the run's
    files into ``output_dir`` (a new or empty folder, as for ``hydra.run.dir``; needed unless the config sets
    ``paths.output_dir``).

    Returns the :class:`~simlearn.build.Run`: ``cfg`` (filled), ``datamodule``, ``model``, ``trainer``,
    ``metrics`` (the flat dict of ``metrics.json``), ``best_path``, ``output_dir``. A mistake in a value of the config
    raises :class:`simlearn.errors.UserError`, with the message the command prints (an override of a key the config
    lacks: Hydra's ``ConfigCompositionException``).
    """
    from omegaconf import OmegaConf, open_dict  # torch & co. only when used: `import simlearn` stays cheap

    from simlearn.config import compose_config
    from simlearn.console import quiet_console
    from simlearn.errors import user_errors_unwrapped
    from simlearn.train import train_run

    if OmegaConf.is_config(overrides):
        cfg, given = copy.deepcopy(overrides), None  # filled in place by the run: the caller's config stays as it was
        if output_dir is not None:
            with open_dict(cfg):
                cfg.paths.output_dir = str(output_dir)
    else:
        given = [str(override) for override in overrides]
        cfg = compose_config(given, output_dir=output_dir)
    quiet_console()  # as the command: no Lightning tips, no LeafSpec warning (a notebook's own logging is kept)
    with user_errors_unwrapped():  # a data or backbone class's refusal, not Hydra's InstantiationException around it
        return train_run(cfg, overrides=given)
