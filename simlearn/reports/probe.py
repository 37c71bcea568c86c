"""The unseen-class probe: where do images of classes never trained on land among the trained classes?

For each probe class p (e.g. zebra) and each trained class c (e.g. dolphin, tiger, horse):

* ``cos``: mean cosine similarity over all pairs (probe image of p, test image of c) — exact, as the dot product of
  the two classes' mean unit embeddings;
* ``angle_deg``: ``degrees(arccos(cos))``;
* ``cos_weight``: mean cosine between the probe images of p and c's classifier weight (its direction);
* ``assigned``: share of p's probe images that the cosine classifier assigns to c (highest cosine to its weight).

``cos_weight`` and ``assigned`` need a classifier loss (e.g. ``loss=softmax``); without one they are None.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simlearn.data.base import EmbeddingDataModule
from simlearn.errors import UserError
from simlearn.inference import embed
from simlearn.retrieval.vectors import angle_deg, unit_rows

__all__ = ["ProbeReport", "plot_circle", "probe_similarity"]

log = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    """Unit vectors along the last axis, in float64 (the shared :func:`~simlearn.retrieval.vectors.unit_rows`)."""
    return unit_rows(x, np.float64)


def probe_similarity(
    probe_embeddings: np.ndarray,
    probe_labels: np.ndarray,
    probe_names: Sequence[str],
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    class_weights: np.ndarray | None = None,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """``{probe class: {trained class: {"cos", "angle_deg", "cos_weight", "assigned"}}}`` (see the module doc).

    ``probe_labels`` index ``probe_names`` and ``test_labels`` index ``class_names``; ``class_weights`` is the
    classifier's (embedding_dim × classes) weight matrix, columns in ``class_names`` order, or None.
    """
    probe, test = _unit(probe_embeddings), _unit(test_embeddings)
    probe_labels, test_labels = np.asarray(probe_labels), np.asarray(test_labels)
    weights = None
    if class_weights is not None:
        weights = _unit(np.asarray(class_weights, dtype=np.float64).T)  # (classes, dim)
        if weights.shape != (len(class_names), probe.shape[1]):
            raise UserError(
                f"the classifier has weights of shape {np.asarray(class_weights).shape} but the probe needs "
                f"(embedding dim {probe.shape[1]}) × ({len(class_names)} classes)."
            )
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for p, probe_name in enumerate(probe_names):
        members = probe[probe_labels == p]
        if len(members) == 0:
            raise UserError(f"the probe has no images of class {probe_name!r}.")
        mean_probe = members.mean(axis=0)
        assigned = (members @ weights.T).argmax(axis=1) if weights is not None else None
        row: dict[str, dict[str, float | None]] = {}
        for c, class_name in enumerate(class_names):
            others = test[test_labels == c]
            cos = float(mean_probe @ others.mean(axis=0)) if len(others) else math.nan
            row[class_name] = {
                "cos": cos,
                "angle_deg": angle_deg(cos),  # NaN for a class without test images
                "cos_weight": float((members @ weights[c]).mean()) if weights is not None else None,
                "assigned": float((assigned == c).mean()) if assigned is not None else None,
            }
        result[probe_name] = row
    return result


def plot_circle(
    path: str | Path,
    test_embeddings: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
    class_weights: np.ndarray | None = None,
    probe_embeddings: np.ndarray | None = None,
    probe_labels: np.ndarray | None = None,
    probe_names: Sequence[str] = (),
    title: str | None = None,
) -> Path:
    """The unit circle of 2-D embeddings: test points coloured by class on a ring just outside the circle, each
    class's classifier direction as a line from the centre, the probe points (black markers) on a ring just inside
    it, drawn on top, and each probe class's mean direction dashed. Points are spread radially at random so that
    they do not hide each other; only their angle carries information."""
    test = _unit(test_embeddings)
    if test.shape[1] != 2:
        raise UserError(f"the circle plot needs 2-D embeddings (head.out_dim=2), got dimension {test.shape[1]}.")
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(7.5, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    angles = np.linspace(0, 2 * np.pi, 361)
    ax.plot(np.cos(angles), np.sin(angles), color="0.6", lw=1, zorder=1)
    colors = [f"C{i % 10}" for i in range(len(class_names))]
    for c, name in enumerate(class_names):
        points = test[np.asarray(test_labels) == c]
        radius = rng.uniform(1.0, 1.1, size=(len(points), 1))
        ax.scatter(*(points * radius).T, s=14, alpha=0.5, color=colors[c], lw=0, zorder=2, label=f"{name} (test)")
    if class_weights is not None:
        weights = _unit(np.asarray(class_weights, dtype=np.float64).T)
        for c, name in enumerate(class_names):
            x, y = weights[c]
            ax.plot([0, 1.2 * x], [0, 1.2 * y], color=colors[c], lw=2.5, zorder=3)
            ax.annotate(
                f"{name}\nclassifier",
                (1.34 * x, 1.34 * y),
                ha="center",
                va="center",
                color=colors[c],
                fontsize=10,
                fontweight="bold",
            )
    if probe_embeddings is not None and len(probe_embeddings):
        probe = _unit(probe_embeddings)
        markers = ["X", "P", "D", "*", "s"]
        for p, name in enumerate(probe_names):
            points = probe[np.asarray(probe_labels) == p]
            radius = rng.uniform(0.8, 0.92, size=(len(points), 1))
            ax.scatter(
                *(points * radius).T,
                s=30,
                marker=markers[p % len(markers)],
                color="white",
                edgecolor="black",
                lw=0.7,
                zorder=4,
                label=f"{name} (probe, never trained on; inner ring)",
            )
            mean = _unit(points.mean(axis=0))
            ax.plot([0, 0.78 * mean[0]], [0, 0.78 * mean[1]], color="black", ls="--", lw=1.5, zorder=3)
            ax.annotate(
                f"{name} mean",
                (0.4 * mean[0], 0.4 * mean[1]),
                xytext=(6, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=10,
            )
    ax.set_aspect("equal")
    ax.set_xlim(-1.6, 1.6)
    ax.set_ylim(-1.6, 1.6)
    ax.axhline(0, color="0.9", lw=0.8, zorder=0)
    ax.axvline(0, color="0.9", lw=0.8, zorder=0)
    ax.set_xlabel("embedding dim 1")
    ax.set_ylabel("embedding dim 2")
    ax.set_title(title or "2-D embeddings on the unit circle")
    ax.legend(loc="lower left", fontsize=9, markerscale=1.5, framealpha=0.9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    fig.clear()
    return path


def classifier_weights(model: Any, label_field: str, task: str | None = None) -> np.ndarray | None:
    """The (embedding_dim × classes) weights of the model's classifier task on ``label_field`` (or named ``task``)."""
    tasks = model.loss.tasks
    if task is not None:
        if task not in tasks:
            raise UserError(f"reports.probe.task={task!r} is not a loss task; valid: {sorted(tasks)}.")
        candidates = [tasks[task]]
    else:
        candidates = [t for t in tasks.values() if getattr(t, "field", None) == label_field]
    for candidate in candidates:
        weights = getattr(candidate, "class_weights", None)
        if weights is not None:
            return weights.detach().float().cpu().numpy()
    return None


@dataclass
class ProbeReport:
    """After testing: embed the data's probe classes (``datamodule.probe_dataloader()``), compare them with the
    test split's classes (:func:`probe_similarity`), write ``probe.json`` and, for 2-D embeddings, ``circle.png``
    (:func:`plot_circle`). Returns ``{"<probe>/<class>/cos": …, "<probe>/<class>/assigned": …}``.
    """

    task: str | None = None
    json_name: str = "probe.json"
    figure_name: str = "circle.png"

    def __call__(
        self, trainer: Any, model: Any, datamodule: EmbeddingDataModule, output_dir: str | Path
    ) -> dict[str, float]:
        label_field = datamodule.label_field
        test = model.results["test"]
        # a UserError that says how to set data.probe_classes when the data has none
        probe = embed(model.encoder, datamodule.probe_dataloader())
        num_classes = len(datamodule.class_names)
        probe_labels = probe.fields[label_field] - num_classes
        weights = classifier_weights(model, label_field, self.task)
        result = probe_similarity(
            probe.embeddings,
            probe_labels,
            datamodule.probe_class_names,
            test.embeddings,
            test.fields[label_field],
            datamodule.class_names,
            weights,
        )
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / self.json_name).write_text(json.dumps(_rounded(result), indent=2, allow_nan=False) + "\n")
        if test.embeddings.shape[1] == 2:
            plot_circle(
                output_dir / self.figure_name,
                test.embeddings,
                test.fields[label_field],
                datamodule.class_names,
                weights,
                probe.embeddings,
                probe_labels,
                datamodule.probe_class_names,
                title=f"Test images, classifier directions and unseen {', '.join(datamodule.probe_class_names)}",
            )
        else:
            log.info("embeddings are %d-D: no circle plot (set head.out_dim=2)", test.embeddings.shape[1])
        metrics = {}
        for probe_name, row in result.items():
            for class_name, values in row.items():
                for key in ("cos", "assigned"):
                    if values[key] is not None:
                        metrics[f"{probe_name}/{class_name}/{key}"] = float(values[key])
        return metrics


def _rounded(result: dict) -> dict:
    def value(v: float | None) -> float | None:
        return None if v is None or math.isnan(v) else round(float(v), 6)

    return {p: {c: {k: value(v) for k, v in values.items()} for c, values in row.items()} for p, row in result.items()}
