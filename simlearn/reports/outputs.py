"""Files every evaluation writes into its run dir, and the configured reports that run after testing."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from simlearn.console import is_count
from simlearn.models import EmbeddingModule
from simlearn.reports.similarity import class_similarity
from simlearn.retrieval.codes import pack_codes


def write_evaluation(
    output_dir: str | Path,
    embeddings: np.ndarray,
    fields: Mapping[str, np.ndarray],
    label_field: str,
    class_names: Sequence[str],
    dataset_fields: Mapping[str, np.ndarray] | None = None,
    dataset_class_names: Sequence[str] | None = None,
    codes: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write ``embeddings.npz``, ``similarity.json`` and ``similarity.png`` (class-to-class heatmap annotated with
    cosine and angle); return their paths.

    ``fields`` hold the training labels (``class_names`` names them), which the heatmap is drawn in. The npz holds
    the dataset's own values (``dataset_fields``, named by ``dataset_class_names``; the data module's
    :meth:`~simlearn.data.base.EmbeddingDataModule.dataset_fields`): ``embeddings``, ``labels`` (the codes of
    ``label_field``), ``class_names`` (``class_names[labels[i]]`` is item i's class) and one array per label field.
    Without them the training labels are written, named by ``class_names``. ``codes``: a hashing head's packed
    binary codes (uint8, bits / 8 bytes per item), written as ``codes`` beside the float relaxation."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in ("embeddings.npz", "similarity.json", "similarity.png")}
    written = dict(fields if dataset_fields is None else dataset_fields)
    names = class_names if dataset_class_names is None else dataset_class_names
    arrays = {
        "embeddings": embeddings,
        "labels": written[label_field],
        "class_names": np.array([str(n) for n in names], dtype=str),
    }
    if codes is not None:
        arrays["codes"] = codes
    # no label field is named like these (EmbeddingDataModule.setup refuses simlearn.fields.NOT_LABEL_FIELDS)
    np.savez_compressed(paths["embeddings.npz"], **arrays, **written)
    similarity = class_similarity(embeddings, fields[label_field], class_names=list(class_names))
    similarity.save_json(paths["similarity.json"])
    similarity.save_heatmap(paths["similarity.png"], title=f"Mean cosine similarity between {label_field} classes")
    return paths


def write_unlabelled_embeddings(
    output_dir: str | Path, embeddings: np.ndarray, index: np.ndarray, datamodule: Any
) -> Path:
    """``embeddings.npz`` of a test split without labels: ``embeddings``, ``index`` (the items' numbers) and, for
    image files, ``paths``."""
    path = Path(output_dir) / "embeddings.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"embeddings": embeddings, "index": index}
    paths = datamodule.datasets["test"].paths_of(index)
    if paths is not None:
        arrays["paths"] = np.array(paths, dtype=str)
    np.savez_compressed(path, **arrays)
    return path


def write_metrics(output_dir: str | Path, metrics: Mapping[str, float | str]) -> Path:
    """``metrics.json``: the flat metric dict (``val/…``, ``test/…``), sorted by key; counts (``num_…``,
    ``train/epochs``: :func:`~simlearn.console.is_count`) as integers, other numbers as floats, the few descriptions
    (``test/protocol``) as text."""
    path = Path(output_dir) / "metrics.json"

    def value(key: str) -> float | int | str:
        number = metrics[key]
        return number if isinstance(number, str) else round(float(number)) if is_count(key) else float(number)

    values = {key: value(key) for key in sorted(metrics)}
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path


def write_splits(output_dir: str | Path, datamodule: Any) -> Path | None:
    """``splits.json``: how the data was split and what each split holds (classes, item counts), for every run,
    closed-set or not (:meth:`~simlearn.data.base.EmbeddingDataModule.split_summary`)."""
    if not hasattr(datamodule, "split_summary"):
        return None
    path = Path(output_dir) / "splits.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(datamodule.split_summary(), indent=2) + "\n")
    return path


def write_per_class(
    output_dir: str | Path,
    evaluator: Any,
    embeddings: np.ndarray,
    fields: Mapping[str, np.ndarray],
    names: Sequence[str],
    dataset_code: Sequence[int] | None = None,
) -> Path | None:
    """``per_class.csv``: recall@1 and MAP@R of the test queries of each class (evaluators with ``per_class``), worst
    first, so that the classes a model fails on are the first lines. ``fields`` hold the training labels, which
    ``names`` names; the ``label`` column is the dataset's own code of the class (``dataset_code[label]``), as in
    ``embeddings.npz``."""
    if not hasattr(evaluator, "per_class"):
        return None
    rows = evaluator.per_class(torch.from_numpy(embeddings), {k: torch.from_numpy(v) for k, v in fields.items()})
    path = Path(output_dir) / "per_class.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "label", "num_queries", "recall@1", "map@r"])
        for row in sorted(rows, key=lambda r: (r["map@r"], r["label"])):
            label = int(row["label"])
            name = names[label] if 0 <= label < len(names) else str(label)
            code = int(dataset_code[label]) if dataset_code is not None and 0 <= label < len(dataset_code) else label
            writer.writerow([name, code, row["num_queries"], f"{row['recall@1']:.6f}", f"{row['map@r']:.6f}"])
    return path


def run_reports(
    cfg: DictConfig, trainer: pl.Trainer, model: EmbeddingModule, datamodule: Any, output_dir: Any
) -> dict[str, float]:
    """Run the configured ``reports`` (analyses after testing); return their metrics, prefixed ``test/``."""
    metrics: dict[str, float] = {}
    for name, report_cfg in (cfg.get("reports") or {}).items():
        if report_cfg is None:
            continue
        report = instantiate(report_cfg)
        values = report(trainer=trainer, model=model, datamodule=datamodule, output_dir=output_dir) or {}
        metrics.update({f"test/{name}/{key}": float(value) for key, value in values.items()})
    return metrics


def write_test_outputs(
    cfg: DictConfig,
    trainer: pl.Trainer,
    model: EmbeddingModule,
    datamodule: Any,
    output_dir: Any,
    metrics: Mapping[str, float],
) -> dict[str, float]:
    """On rank 0 after testing: the test split's files, then the reports (their metrics added), then metrics.json.
    Data without labels (``datamodule.labelled`` false) gets ``embeddings.npz`` without labels
    (:func:`write_unlabelled_embeddings`) and none of the files made of labels (``similarity.*``, ``per_class.csv``),
    which ``splits.json`` says (``"labels": "absent"``)."""
    result = model.results["test"]
    if not getattr(datamodule, "labelled", True):
        write_unlabelled_embeddings(output_dir, result.embeddings, result.index, datamodule)
        metrics = {**metrics, **run_reports(cfg, trainer, model, datamodule, output_dir)}
        write_metrics(output_dir, {**metrics, "test/protocol": "label-free"})
        return metrics
    write_evaluation(
        output_dir,
        result.embeddings,
        result.fields,
        datamodule.label_field,
        datamodule.class_names,
        dataset_fields=datamodule.dataset_fields(result.fields),
        dataset_class_names=datamodule.dataset_class_names,
        codes=pack_codes(result.embeddings) if getattr(model.encoder.head, "code_bits", None) else None,
    )
    codes = datamodule.dataset_fields({datamodule.label_field: np.arange(len(datamodule.label_names))})
    write_per_class(
        output_dir,
        model.evaluator,
        result.embeddings,
        result.fields,
        datamodule.label_names,
        dataset_code=codes[datamodule.label_field],
    )
    metrics = {**metrics, **run_reports(cfg, trainer, model, datamodule, output_dir)}
    described: dict[str, float | str] = dict(metrics)
    if hasattr(model.evaluator, "protocol"):
        described["test/protocol"] = model.evaluator.protocol(result.fields)
    write_metrics(output_dir, described)
    return metrics
