"""Files every evaluation writes into its run dir."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from simlearn.evaluation.similarity import class_similarity
from simlearn.evaluation.structure import write_structure


def write_evaluation(
    output_dir: str | Path,
    embeddings: np.ndarray,
    fields: Mapping[str, np.ndarray],
    label_field: str,
    class_names: Sequence[str],
) -> dict[str, Path]:
    """Write ``embeddings.npz`` (``embeddings``, ``labels`` and one array per label field), ``similarity.json`` and
    ``similarity.png`` (class-to-class heatmap annotated with cosine and angle), and for digit data (label fields
    ``digit`` and ``parity``) ``structure.json``; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in ("embeddings.npz", "similarity.json", "similarity.png")}
    np.savez_compressed(paths["embeddings.npz"], embeddings=embeddings, labels=fields[label_field], **dict(fields))
    similarity = class_similarity(embeddings, fields[label_field], class_names=list(class_names))
    similarity.save_json(paths["similarity.json"])
    similarity.save_heatmap(paths["similarity.png"], title=f"Mean cosine similarity between {label_field} classes")
    if "digit" in fields and "parity" in fields:
        paths["structure.json"] = output_dir / "structure.json"
        write_structure(paths["structure.json"], embeddings, fields["digit"])
    return paths


def write_metrics(output_dir: str | Path, metrics: Mapping[str, float]) -> Path:
    """``metrics.json``: the flat metric dict (``val/…``, ``test/…``), sorted by key."""
    path = Path(output_dir) / "metrics.json"
    path.write_text(json.dumps({key: float(metrics[key]) for key in sorted(metrics)}, indent=2) + "\n")
    return path
