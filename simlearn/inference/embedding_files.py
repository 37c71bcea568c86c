"""Embed a dataset with a trained checkpoint: ``simlearn-embed ckpt_path=PATH [data=NAME ...]``.

Every split is embedded with the evaluation transforms (no augmentation, also for train) and written as
``<split>.npz``; with pyarrow installed all splits also go to one ``embeddings.parquet``; with ``db=PATH`` all splits
also go into a LanceDB table (an embedded vector database, :mod:`simlearn.retrieval.vectordb`). The npz files and the
database are galleries for ``simlearn-search`` and ``simlearn-serve``; the npz files plain arrays for anything else
(``numpy.load``). A hashing head's model (``head=hash``) also writes its packed binary codes: ``codes`` in the npz
(uint8, bits / 8 bytes per item, :func:`simlearn.retrieval.codes.pack_codes`), a fixed-size binary column ``code`` in
the parquet file and a ``code`` column of LanceDB's binary vector type (``fixed_size_list<uint8>``, searched by
Hamming distance) in the LanceDB table, whose ``db_index`` then indexes the codes (IVF_FLAT or IVF_HNSW_FLAT).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from simlearn.checkpoints import restore
from simlearn.data.base import EmbeddingDataModule, Loader
from simlearn.errors import UserError
from simlearn.fields import NOT_LABEL_FIELDS
from simlearn.inference import InferenceModel, embed, pick_device
from simlearn.models import EmbeddingSet
from simlearn.retrieval import vectordb
from simlearn.retrieval.codes import encoder_code_bits, pack_codes

log = logging.getLogger(__name__)

__all__ = ["embed_dataset", "embed_splits", "write_npz", "write_parquet"]


def split_loader(datamodule: EmbeddingDataModule, split: str, batch_size: int | None = None) -> Loader:
    """A plain in-order loader over one split, with the evaluation transforms for every split (train included)."""
    return datamodule.loader(split, batch_size=batch_size)


def embed_splits(
    encoder: torch.nn.Module,
    datamodule: EmbeddingDataModule,
    splits: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> dict[str, EmbeddingSet]:
    """The embeddings of the named splits of a set-up data module (all of its splits that hold items when None: a
    class split or ``val_fraction=0`` can leave val empty)."""
    available = list(datamodule.datasets)
    empty = [s for s in available if len(datamodule.datasets[s]) == 0]
    if splits is None:
        splits = [s for s in available if s not in empty]
        if empty:
            log.info("splits %s hold no items: nothing to embed for them", empty)
    splits = list(splits)
    unknown = [s for s in splits if s not in available]
    if unknown:
        raise UserError(f"splits={unknown} are not splits of this data; valid: {available}, or splits=null for all.")
    named_empty = [s for s in splits if s in empty]
    if named_empty:
        holding = [s for s in available if s not in empty]
        raise UserError(f"splits={named_empty} hold no items in this data; splits with items: {holding}.")
    encoder.to(device)
    return {split: embed(encoder, split_loader(datamodule, split, batch_size), device) for split in splits}


def split_arrays(
    result: EmbeddingSet, datamodule: EmbeddingDataModule, split: str, codes: bool = False
) -> dict[str, np.ndarray]:
    """The arrays of one split's npz: embeddings, labels, index, label fields, class names, and file paths. The
    label fields hold the dataset's own values (:meth:`~simlearn.data.base.EmbeddingDataModule.dataset_fields`),
    ``labels`` those of the label field and ``class_names[labels[i]]`` names item i's class, under any split.
    ``codes``: the embeddings are a hashing head's relaxed codes; their packed codes go in ``codes`` (uint8)."""
    label_field = datamodule.label_field
    fields = datamodule.dataset_fields(result.fields)
    arrays: dict[str, np.ndarray] = {
        "embeddings": result.embeddings.astype(np.float32),
        "index": result.index,
        **{name: values for name, values in fields.items() if name not in ("embeddings", "index")},
    }
    if codes:
        arrays["codes"] = pack_codes(arrays["embeddings"])
    if label_field in fields:
        arrays["labels"] = fields[label_field]
    arrays["class_names"] = np.array(datamodule.dataset_class_names, dtype=str)
    arrays["label_field"] = np.array(label_field)
    arrays["split"] = np.array(split)
    paths = datamodule.datasets[split].paths_of(result.index)
    if paths is not None:
        arrays["paths"] = np.array(paths, dtype=str)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray], ckpt_path: str, model_digest: str | None = None) -> Path:
    """One split's arrays as ``path``, with the checkpoint they came from (``ckpt_path``) and, when given, the
    model's digest (``model_digest``: :attr:`~simlearn.inference.InferenceModel.digest`, what a gallery is checked
    against)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = {"model_digest": np.array(model_digest)} if model_digest else {}
    np.savez(path, **arrays, ckpt_path=np.array(str(Path(ckpt_path).resolve())), **digest)
    return path


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet(
    path: Path, per_split: dict[str, dict[str, np.ndarray]], ckpt_path: str, model_digest: str | None = None
) -> Path:
    """One row per item of every split: ``split``, ``index``, ``path`` (file data), ``label``, ``class_name``, the
    label fields, ``embedding`` (a fixed-size list of float32) and, for a hashing head, ``code`` (its packed code: a
    fixed-size binary of bits / 8 bytes). The schema metadata holds ``simlearn.ckpt_path`` and
    ``simlearn.model_digest``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for split, arrays in per_split.items():
        n, dim = arrays["embeddings"].shape
        columns: dict[str, Any] = {"split": pa.array([split] * n), "index": pa.array(arrays["index"])}
        if "paths" in arrays:
            columns["path"] = pa.array(arrays["paths"].tolist())
        if "labels" in arrays:
            names = arrays["class_names"]
            labels = arrays["labels"]
            columns["label"] = pa.array(labels)
            columns["class_name"] = pa.array(
                [str(names[label]) if 0 <= label < len(names) else str(label) for label in labels.tolist()]
            )
        for name, values in arrays.items():
            if name not in NOT_LABEL_FIELDS:
                columns[name] = pa.array(values)
        flat = pa.array(arrays["embeddings"].reshape(-1), type=pa.float32())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        if "codes" in arrays:
            packed = np.ascontiguousarray(arrays["codes"])
            columns["code"] = pa.array([row.tobytes() for row in packed], type=pa.binary(packed.shape[1]))
        tables.append(pa.table(columns))
    table = pa.concat_tables(tables, promote_options="default")
    metadata = {b"simlearn.ckpt_path": str(Path(ckpt_path).resolve()).encode()}
    if model_digest:
        metadata[b"simlearn.model_digest"] = model_digest.encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def rebuild(cfg: DictConfig) -> tuple[Any, InferenceModel]:
    """The data (the checkpoint's, or as changed by ``data=``/``+data.KEY=``, as for simlearn-eval) and the
    checkpoint's inference model (:func:`~simlearn.checkpoints.restore` without a loss, so any data with images will
    do), on the CPU."""
    restored = restore(cfg, with_loss=False)
    return restored.datamodule, restored.inference


def embed_dataset(cfg: DictConfig) -> dict[str, Path]:
    """Rebuild the checkpoint's encoder and the data (see :func:`rebuild`), embed the splits, write the files;
    return their paths (``<split>`` → npz, ``parquet`` → the parquet file)."""
    parquet = cfg.get("parquet", "auto")
    if parquet not in ("auto", True, False):
        raise UserError(f"parquet must be auto, true or false, got {parquet!r}.")
    if parquet is True and not parquet_available():
        raise UserError(
            "parquet=true needs pyarrow, which is not installed; pip install 'simlearn[parquet]' (or pyarrow), "
            "or set parquet=auto to write npz files only."
        )
    db_index = cfg.get("db_index")
    if db_index is not None and str(db_index).upper() not in vectordb.INDEX_TYPES:
        raise UserError(f"db_index={db_index!r} is not a LanceDB vector index; valid: {sorted(vectordb.INDEX_TYPES)}.")
    if cfg.get("db"):  # a table already there fails now, not after embedding every split
        _check_db_target(Path(str(cfg.db)).expanduser(), str(cfg.get("db_table") or vectordb.TABLE), cfg)
    splits = cfg.get("splits")
    if isinstance(splits, str):
        splits = [splits]
    device = pick_device(cfg.get("device"))
    datamodule, model = rebuild(cfg)
    bits = encoder_code_bits(model.encoder)
    if bits is not None and cfg.get("db") and db_index is not None:  # a hashing model's index is on its codes
        vectordb.check_index_type(db_index, codes=True)
    model.to(device)
    results = embed_splits(model.encoder, datamodule, splits, model.device, cfg.get("batch_size"))
    out_dir = Path(cfg.get("out_dir") or cfg.paths.output_dir)
    per_split = {split: split_arrays(result, datamodule, split, bits is not None) for split, result in results.items()}
    # the file the weights came from (a model folder's model.safetensors), as simlearn-search's model.path names it
    ckpt_path, digest = model.path, model.digest
    paths = {split: write_npz(out_dir / f"{split}.npz", a, ckpt_path, digest) for split, a in per_split.items()}
    if parquet is True or (parquet == "auto" and parquet_available()):
        paths["parquet"] = write_parquet(out_dir / "embeddings.parquet", per_split, ckpt_path, digest)
    elif parquet == "auto":
        log.info("pyarrow is not installed: no embeddings.parquet (pip install 'simlearn[parquet]')")
    db_note = ""
    if cfg.get("db"):
        table_name = str(cfg.get("db_table") or vectordb.TABLE)
        table = vectordb.write_embeddings(
            Path(str(cfg.db)).expanduser(),
            per_split,
            ckpt_path,
            table_name,
            bool(cfg.get("db_overwrite")),
            model_digest=digest,
        )
        paths["db"] = Path(str(cfg.db)).expanduser()
        db_note = f"LanceDB table {table_name!r}" + (", codes in column 'code'" if bits is not None else "")
        if db_index is not None:
            built = vectordb.create_index(
                table, str(db_index), cfg.get("db_index_partitions"), cfg.get("db_index_sub_vectors"), bits is not None
            )
            db_note += f", {built} index"
    table = Table(title=f"simlearn-embed · {cfg.ckpt_path}", title_justify="left")
    for column in ("split", "items", "dim", "file"):
        table.add_column(column, justify="right" if column in ("items", "dim") else "left")
    for split, arrays in per_split.items():
        n, dim = arrays["embeddings"].shape
        shape = f"{dim} + {bits}-bit codes" if bits is not None else str(dim)
        table.add_row(split, str(n), shape, str(paths[split]))
    total = str(sum(len(a["embeddings"]) for a in per_split.values()))
    if "parquet" in paths:
        table.add_row("all", total, "", str(paths["parquet"]))
    if "db" in paths:
        table.add_row("all", total, "", f"{paths['db']} ({db_note})")
    Console().print(table)
    return paths


def _check_db_target(db: Path, table: str, cfg: DictConfig) -> None:
    """A database target that cannot be written, or holds the table already (without db_overwrite), as one line."""
    if db.exists() and not db.is_dir():
        raise UserError(f"db={str(db)!r} is a file; give a folder for the LanceDB database (e.g. embeddings.lancedb).")
    if db.is_dir() and vectordb.is_database(db) and not cfg.get("db_overwrite"):
        try:
            _, _, existing = vectordb.open_table(db, table)
        except UserError:
            return  # no such table (or none at all): it will be created
        raise UserError(
            f"db={str(db)!r} already holds a table {existing!r}; write to another db_table=NAME or db=PATH, or "
            f"replace it with db_overwrite=true."
        )
