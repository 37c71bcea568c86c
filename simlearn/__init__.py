"""simlearn: metric learning for image similarity (Hydra configs, Lightning training, exact retrieval metrics)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simlearn.model_folder import SimilarityModel

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike, device: str = "cpu") -> SimilarityModel:
    """The model of a folder written by ``simlearn-export format=hf`` (or of a training checkpoint), ready to embed
    images: ``simlearn.load(folder).embed(["a.png", "b.png"])`` gives their unit-length float32 embeddings.
    See :func:`simlearn.model_folder.load`."""
    from simlearn.model_folder import load as load_folder  # torch & co. only when used: `import simlearn` stays cheap

    return load_folder(path, device)
