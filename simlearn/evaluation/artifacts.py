"""Files every evaluation writes into its run dir."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from simlearn.evaluation.similarity import class_similarity


def write_evaluation(
    output_dir: str | Path,
    embeddings: np.ndarray,
    fields: Mapping[str, np.ndarray],
    label_field: str,
    class_names: Sequence[str],
    metrics: Mapping[str, float],
) -> dict[str, Path]:
    """Write ``metrics.json``, ``embeddings.npz`` (``embeddings``, ``labels`` and one array per label field),
    ``similarity.json`` and ``similarity.png`` (class-to-class cosine heatmap); return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in ("metrics.json", "embeddings.npz", "similarity.json")}
    paths["similarity.png"] = output_dir / "similarity.png"
    paths["metrics.json"].write_text(json.dumps({k: float(metrics[k]) for k in sorted(metrics)}, indent=2) + "\n")
    np.savez_compressed(paths["embeddings.npz"], embeddings=embeddings, labels=fields[label_field], **dict(fields))
    similarity = class_similarity(embeddings, fields[label_field], class_names=list(class_names))
    similarity.save_json(paths["similarity.json"])
    similarity.save_heatmap(paths["similarity.png"], title=f"Mean cosine similarity between {label_field} classes")
    return paths
