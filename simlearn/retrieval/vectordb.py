"""Embeddings in a vector database: LanceDB, embedded (in-process, no server), one folder on disk.

``simlearn-embed db=PATH`` writes every embedded item as a row of a LanceDB table (:func:`write_embeddings`): ``id``
(the row, 0 … N-1), ``split``, ``index`` (the item's index in its split), ``label`` and ``class_name`` (when the data
has labels; named as in ``embeddings.parquet``), ``path`` (when items are files), one column per label field, and
``vector``: the unit-length float32 embedding. The table's schema metadata records the checkpoint, the embedding size,
the class names and the label field. ``simlearn-search gallery=PATH`` (and ``simlearn-serve``) read it back as a gallery
(:func:`read_table`) and search it through :func:`candidates`: a candidate source (:class:`LanceCandidates`)
whose candidates come from LanceDB, ordered by simlearn's one neighbour search (float64 cosines, ties to the lower row).
Through a full scan (``exact``) the result is exactly simlearn's exact search; through an approximate vector index
(IVF_PQ, IVF_HNSW_SQ, …, :func:`create_index`) LanceDB's candidates are re-scored and ordered the same way, and nearer
items the index did not visit can be missing.

Why LanceDB: it runs in the process (no server to start, nothing to configure), stores the table as columnar Arrow
(Lance) files with any metadata columns next to the vectors (filters, paths, labels, label fields in one place), has
real ANN indexes (IVF-PQ, IVF-HNSW) built and persisted inside the table, and reads zero-copy into numpy/pyarrow.

**Codes.** A hashing model's table (``head=hash``) also holds ``code``: its packed binary code, LanceDB's binary
vector type (``fixed_size_list<uint8>[bits / 8]``), searched by LanceDB with ``distance_type("hamming")``
(:class:`LanceCodes`, a code gallery's binary index for :class:`~simlearn.retrieval.codes.CodeIndex`): by brute force
(exact: the tie rule restored by :meth:`~simlearn.retrieval.codes.CodeIndex.hamming`, LanceDB's order among equal
distances being its own), or through an IVF_FLAT or IVF_HNSW_FLAT index with the hamming metric, the only index types
that LanceDB 0.40 builds on uint8 vectors (:data:`CODE_INDEX_TYPES`; approximate). ``vector`` keeps the float
relaxation (unit length: the same signs), which ``rerank=N`` re-scores.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simlearn.errors import UserError
from simlearn.fields import NOT_LABEL_FIELDS
from simlearn.retrieval.vectors import row_norms, unit_rows

if TYPE_CHECKING:
    from simlearn.retrieval.codes import CodeIndex

# LanceDB's Rust core logs normal events (e.g. "No existing dataset … will be created") as WARN lines on stderr;
# read when lancedb is first imported, so set before that (a user's own LANCEDB_LOG wins)
os.environ.setdefault("LANCEDB_LOG", "error")

log = logging.getLogger(__name__)

__all__ = [
    "CODE_INDEX_TYPES",
    "INDEX_TYPES",
    "LanceCodes",
    "TABLE",
    "LanceCandidates",
    "TableContents",
    "candidates",
    "check_index_type",
    "code_candidates",
    "create_index",
    "is_database",
    "open_table",
    "read_table",
    "write_embeddings",
]

#: the table simlearn-embed writes unless told otherwise
TABLE = "embeddings"
#: columns of every table simlearn writes; label fields whose names clash get a ``field_`` prefix
RESERVED = ("id", "split", "index", "label", "class_name", "path", "vector", "code")
#: schema metadata keys (bytes, as Arrow stores them)
_META = "simlearn"
#: LanceDB's vector index types (its ``index_type`` names) → its index config classes
INDEX_TYPES = {
    "IVF_PQ": "IvfPq",
    "IVF_SQ": "IvfSq",
    "IVF_FLAT": "IvfFlat",
    "IVF_HNSW_SQ": "IvfHnswSq",
    "IVF_HNSW_PQ": "IvfHnswPq",
    "IVF_HNSW_FLAT": "IvfHnswFlat",
}
#: the index types LanceDB (0.40) builds on a uint8 ``code`` column with the hamming metric: PQ, SQ and RQ refuse
#: uint8 vectors
CODE_INDEX_TYPES = ("IVF_FLAT", "IVF_HNSW_FLAT")
#: LanceDB's "dot" distance is 1 - x·y rounded to float32 (|1 - x·y| <= 2 + tiny, so at most 2**-23 off); the score
#: 1 - distance is then computed in float64, exactly. 2**-22 covers that rounding with room to spare.
_SCORE_SLACK = 2.0**-22
#: a vector's norm may be this far from 1 and still be searched as it is (as the neighbour search does)
_UNIT_TOLERANCE = 1e-6
_HINT = "write one with simlearn-embed ckpt_path=… db=PATH"


def _lancedb() -> Any:
    try:
        import lancedb
    except ImportError as error:
        raise UserError(
            f"LanceDB is not installed ({error}); pip install 'simlearn[vectordb]' (lancedb, pyarrow)."
        ) from error
    return lancedb


# ---------------------------------------------------------------- where a table is


def is_database(path: str | Path) -> bool:
    """Whether ``path`` names a LanceDB database (a folder holding ``<table>.lance`` folders, or any folder named
    ``*.lancedb``) or one of its tables (a ``<table>.lance`` folder)."""
    path = Path(path)
    if path.suffix in (".lancedb", ".lance"):
        return True
    if not path.is_dir():
        return False
    try:
        return any(child.suffix == ".lance" and child.is_dir() for child in path.iterdir())
    except OSError:
        return False


def open_table(spec: str | Path, table: str | None = None) -> tuple[Any, Path, str]:
    """``(table, database folder, table name)`` for ``spec``: a database folder (its table ``table``, or its only
    one when None) or a ``<name>.lance`` table folder. Every problem is one :class:`UserError`."""
    lancedb = _lancedb()
    path = Path(spec).expanduser()
    if path.suffix == ".lance" and table is None:
        path, table = path.parent, path.stem
    if not path.is_dir():
        raise UserError(f"{str(spec)!r} does not exist as a LanceDB database folder; {_HINT}.")
    try:
        names = sorted(_table_names(lancedb.connect(str(path))))
    except Exception as error:  # lance raises plain errors for unreadable folders
        raise UserError(f"{str(spec)!r} is not a readable LanceDB database ({error}); {_HINT}.") from error
    if not names:
        raise UserError(f"{str(spec)!r} is not a LanceDB database: it holds no tables; {_HINT}.")
    if table is None:
        if len(names) > 1:
            raise UserError(f"{str(spec)!r} holds the LanceDB tables {names}; choose one with db_table=NAME.")
        table = names[0]
    if table not in names:
        raise UserError(f"{str(spec)!r} has no LanceDB table {table!r}; its tables: {names}.")
    try:
        handle = lancedb.connect(str(path)).open_table(table)
        handle.count_rows()
    except Exception as error:
        raise UserError(
            f"the LanceDB table {table!r} in {str(spec)!r} cannot be read ({error}); write it anew ({_HINT})."
        ) from error
    return handle, path, table


def _table_names(db: Any) -> list[str]:
    names: list[str] = []
    token = None
    while True:  # list_tables pages its answer
        page = db.list_tables(page_token=token)
        names.extend(page.tables)
        token = page.page_token
        if not token:
            return names


# ---------------------------------------------------------------- writing


def _column(values: np.ndarray) -> Any:
    """A 1-D array as an Arrow column; more dimensions as a fixed-size list per row (kept as (N, m) on reading)."""
    import pyarrow as pa

    if values.ndim == 1:
        return pa.array(values.tolist() if values.dtype.kind in "US" else values)
    flat = values.reshape(len(values), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _vectors(embeddings: np.ndarray) -> Any:
    import pyarrow as pa

    unit = unit_rows(np.asarray(embeddings), np.float32, tolerance=_UNIT_TOLERANCE)
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(unit).reshape(-1)), unit.shape[1])


def _field_columns(names: list[str]) -> dict[str, str]:
    """label field → its column name (``field_<name>`` when the name is one of :data:`RESERVED`)."""
    return {name: f"field_{name}" if name in RESERVED else name for name in names}


def write_embeddings(
    db_path: str | Path,
    per_split: Mapping[str, Mapping[str, np.ndarray]],
    ckpt_path: str | Path | None = None,
    table: str = TABLE,
    overwrite: bool = False,
    model_digest: str | None = None,
) -> Any:
    """Write the arrays of every split (as :func:`simlearn.inference.embedding_files.split_arrays` makes them) into
    the LanceDB
    table ``table`` of the database folder ``db_path`` (created when missing), one row per item, ``id`` 0 … N-1 in the
    order of the splits; returns the table. A table of that name already there is replaced only with ``overwrite``;
    otherwise that is a :class:`UserError`, and nothing is written. ``model_digest`` (the model's
    :attr:`~simlearn.inference.InferenceModel.digest`) goes into the table's metadata with ``ckpt_path``."""
    import pyarrow as pa

    lancedb = _lancedb()
    if not per_split:
        raise UserError("there is nothing to write into the database: no split was embedded.")
    db_path = Path(db_path).expanduser()
    if db_path.exists() and not db_path.is_dir():
        raise UserError(
            f"db={str(db_path)!r} is a file; give a folder for the LanceDB database (e.g. embeddings.lancedb)."
        )
    if not table or not table.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"db_table={table!r} is not a table name; use letters, digits, '_' or '-'.")
    first = next(iter(per_split.values()))
    class_names = [str(name) for name in first.get("class_names", np.array([], dtype=str)).tolist()]
    fields = [name for name in first if name not in NOT_LABEL_FIELDS]
    columns = _field_columns(fields)
    dims = {split: arrays["embeddings"].shape[1] for split, arrays in per_split.items()}
    coded = {split: "codes" in arrays for split, arrays in per_split.items()}
    if len(set(coded.values())) > 1:
        raise UserError(f"some splits hold binary codes and some do not ({coded}); embed them with one checkpoint.")
    if len(set(dims.values())) > 1:
        raise UserError(f"the splits have embeddings of different sizes {dims}; embed them with one checkpoint.")
    tables, start = [], 0
    for split, arrays in per_split.items():
        n = len(arrays["embeddings"])
        data: dict[str, Any] = {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "split": pa.array([split] * n, type=pa.string()),
            "index": pa.array(np.asarray(arrays.get("index", np.arange(n)), dtype=np.int64)),
        }
        start += n
        if "labels" in arrays:
            labels = np.asarray(arrays["labels"]).astype(np.int64)
            data["label"] = pa.array(labels)
            data["class_name"] = pa.array(
                [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels.tolist()], type=pa.string()
            )
        if "paths" in arrays:
            data["path"] = pa.array([str(p) for p in arrays["paths"].tolist()], type=pa.string())
        for name in fields:
            data[columns[name]] = _column(np.asarray(arrays[name]))
        data["vector"] = _vectors(arrays["embeddings"])
        if "codes" in arrays:  # LanceDB's binary vector type: searched with distance_type("hamming")
            packed = np.ascontiguousarray(arrays["codes"], dtype=np.uint8)
            data["code"] = pa.FixedSizeListArray.from_arrays(pa.array(packed.reshape(-1)), packed.shape[1])
        tables.append(pa.table(data))
    combined = pa.concat_tables(tables, promote_options="default")
    metadata = {
        "version": "1",
        "ckpt_path": str(Path(ckpt_path).resolve()) if ckpt_path else "",
        "model_digest": model_digest or "",
        "embedding_dim": str(next(iter(dims.values()))),
        "class_names": json.dumps(class_names),
        "label_field": str(first["label_field"]) if "label_field" in first else "",
        "fields": json.dumps(columns),
        "code_bits": str(first["codes"].shape[1] * 8) if "codes" in first else "",
    }
    combined = combined.replace_schema_metadata({f"{_META}.{k}".encode(): v.encode() for k, v in metadata.items()})
    try:
        db = lancedb.connect(str(db_path))
        if table in _table_names(db) and not overwrite:
            raise UserError(
                f"db={str(db_path)!r} already holds a table {table!r}; write to another db_table=NAME or db=PATH, "
                f"or replace it with db_overwrite=true."
            )
        return db.create_table(table, combined, mode="overwrite" if overwrite else "create")
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError) as error:
        raise UserError(f"could not write the LanceDB table {table!r} into db={str(db_path)!r} ({error}).") from error


def create_index(
    table: Any,
    index_type: str = "IVF_PQ",
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    codes: bool = False,
) -> str:
    """Build an approximate vector index on ``table``'s vectors for the dot product (cosine: they have unit length),
    or with ``codes`` on its ``code`` column for the Hamming distance (:data:`CODE_INDEX_TYPES` only), persisted in
    the table; returns what was built. ``None``: LanceDB's defaults (about sqrt(rows) partitions, dim/8 or dim/16 PQ
    sub-vectors)."""
    from lancedb import index as lance_index

    kind = str(index_type).upper()
    check_index_type(kind, codes)
    config_class = getattr(lance_index, INDEX_TYPES[kind])
    kwargs: dict[str, Any] = {"distance_type": "hamming" if codes else "dot"}
    if num_partitions is not None:
        kwargs["num_partitions"] = int(num_partitions)
    if num_sub_vectors is not None and "PQ" in kind:
        kwargs["num_sub_vectors"] = int(num_sub_vectors)
    rows = table.count_rows()
    try:
        table.create_index("code" if codes else "vector", config=config_class(**kwargs), replace=True)
    except Exception as error:  # lance's k-means refuses too few rows per partition, a dim PQ cannot split, …
        raise UserError(
            f"LanceDB could not build a {kind} index on {rows} rows ({error}); an approximate index needs many more "
            f"rows than partitions (and for PQ at least 256 rows); use fewer db_index_partitions, or db_index=null "
            f"(exact search by full scan)."
        ) from error
    details = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "distance_type")
    return f"{kind}" + (" hamming" if codes else "") + (f" ({details})" if details else "")


def check_index_type(index_type: Any, codes: bool = False) -> None:
    """``db_index=`` checked (before anything is embedded): a LanceDB vector index type, and for a hashing
    model's codes one that LanceDB builds on uint8 vectors (:data:`CODE_INDEX_TYPES`); else one line."""
    kind = str(index_type).upper()
    if kind not in INDEX_TYPES:
        raise UserError(f"db_index={index_type!r} is not a LanceDB vector index; valid: {sorted(INDEX_TYPES)} or null.")
    if codes and kind not in CODE_INDEX_TYPES:
        raise UserError(
            f"db_index={index_type!r}: a hashing model's codes are indexed for the Hamming distance, which LanceDB "
            f"builds as {list(CODE_INDEX_TYPES)} only (its PQ and SQ refuse uint8 vectors); use one of them, or "
            f"db_index=null (exact search by full scan)."
        )


# ---------------------------------------------------------------- reading


@dataclass
class TableContents:
    """A table written by :func:`write_embeddings`, read back in ``id`` order (row i has id i)."""

    embeddings: np.ndarray
    splits: list[str]
    indices: np.ndarray
    labels: np.ndarray | None
    #: each row's class name (column ``class_name``), None without labels
    row_class_names: list[str] | None
    paths: list[str] | None
    #: label field → its values (N,) or (N, m), under the field's own name
    fields: dict[str, np.ndarray]
    class_names: list[str]
    label_field: str | None
    ckpt_path: str | None
    table: Any
    database: Path
    name: str
    indexed: list[str] = field(default_factory=list)
    #: a hashing model's packed codes (N, bits / 8) uint8 (column ``code``), None in a table of floats only
    codes: np.ndarray | None = None
    #: the vector indexes on the ``code`` column (hamming), as their type names
    indexed_codes: list[str] = field(default_factory=list)
    #: the digest of the model that wrote it (:attr:`~simlearn.inference.InferenceModel.digest`); None: older tables
    model_digest: str | None = None

    @property
    def ids(self) -> list[str]:
        """How people name the items: ``<split>[<index>]``."""
        return [f"{split}[{index}]" for split, index in zip(self.splits, self.indices.tolist(), strict=True)]


def read_table(spec: str | Path, table: str | None = None) -> TableContents:
    """Everything a table written by :func:`write_embeddings` holds (see :func:`open_table` for ``spec`` and
    ``table``); a table simlearn did not write, or one changed since so that its ids are no longer 0 … N-1, is a
    :class:`UserError`."""
    handle, database, name = open_table(spec, table)
    where = f"the LanceDB table {name!r} of {str(spec)!r}"
    schema = handle.schema
    metadata = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items() if k.startswith(b"simlearn.")}
    vector = schema.field("vector").type if "vector" in schema.names else None
    import pyarrow as pa

    if vector is None or not pa.types.is_fixed_size_list(vector) or not pa.types.is_floating(vector.value_type):
        raise UserError(
            f"{where} has no 'vector' column of fixed-size float lists (its columns: {schema.names}); it was not "
            f"written by simlearn-embed. {_HINT[0].upper()}{_HINT[1:]}."
        )
    missing = [c for c in ("id", "split", "index") if c not in schema.names]
    if missing:
        raise UserError(f"{where} lacks the columns {missing} simlearn-embed writes; {_HINT}.")
    try:
        # everything but the vectors in one piece (small); the vectors in batches straight into one float32 array,
        # so that no second copy of them is ever held (1M x 128: 0.5 GB, not 1.5)
        others = [name for name in schema.names if name != "vector"]
        data = handle.search().select(others).limit(None).to_arrow()
        if data.num_rows == 0:
            raise UserError(f"{where} holds no rows; {_HINT} and a non-empty split.")
        ids = data.column("id").to_numpy()
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(len(ids))):
            raise UserError(
                f"{where}: its ids are not 0 … {len(ids) - 1} (rows were added or deleted after simlearn-embed wrote "
                f"it); {_HINT} anew."
            )
        if not np.array_equal(order, np.arange(len(order))):  # as written, the rows are in id order: no copy then
            data = data.take(pa.array(order))
        dim = vector.list_size
        embeddings = np.empty((len(ids), dim), dtype=np.float32)
        filled = 0
        for batch in handle.search().select(["id", "vector"]).limit(None).to_batches(65536):
            rows = batch.column(0).to_numpy()
            values = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            embeddings[rows] = values.reshape(len(rows), dim)
            filled += len(rows)
    except UserError:
        raise
    except Exception as error:
        raise UserError(f"{where} cannot be read ({error}); {_HINT}.") from error
    if filled != len(embeddings):
        raise UserError(
            f"{where} changed while it was read ({filled} vectors for {len(embeddings)} rows); read it again."
        )
    columns = json.loads(metadata.get("simlearn.fields", "{}"))
    fields = {}
    for field_name, column in columns.items():
        if column in data.column_names:
            fields[field_name] = _to_numpy(data.column(column))
    has = set(data.column_names)
    codes = None
    if "code" in has:
        code_type = data.schema.field("code").type
        if not pa.types.is_fixed_size_list(code_type) or not pa.types.is_uint8(code_type.value_type):
            raise UserError(
                f"{where} has a 'code' column of {code_type}, not the packed codes simlearn-embed writes "
                f"(fixed_size_list<uint8>); {_HINT}."
            )
        codes = np.ascontiguousarray(_to_numpy(data.column("code")), dtype=np.uint8)
    return TableContents(
        embeddings=embeddings,
        splits=[str(s) for s in data.column("split").to_pylist()],
        indices=data.column("index").to_numpy(),
        labels=data.column("label").to_numpy() if "label" in has else None,
        row_class_names=[str(s) for s in data.column("class_name").to_pylist()] if "class_name" in has else None,
        paths=[str(p) for p in data.column("path").to_pylist()] if "path" in has else None,
        fields=fields,
        class_names=json.loads(metadata.get("simlearn.class_names", "[]")),
        label_field=metadata.get("simlearn.label_field") or None,
        ckpt_path=metadata.get("simlearn.ckpt_path") or None,
        table=handle,
        database=database,
        name=name,
        indexed=_vector_indexes(handle),
        codes=codes,
        indexed_codes=_vector_indexes(handle, "code") if codes is not None else [],
        model_digest=metadata.get("simlearn.model_digest") or None,
    )


def _to_numpy(column: Any) -> np.ndarray:
    import pyarrow as pa

    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(column.to_pylist(), dtype=str)
    return column.to_numpy(zero_copy_only=False)


def _vector_indexes(handle: Any, column: str = "vector") -> list[str]:
    """The vector indexes on ``column``, as their type names (e.g. ``IvfPq``)."""
    try:
        return [str(i.index_type) for i in handle.list_indices() if list(i.columns) == [column]]
    except Exception:  # an index listing that fails only means: search by full scan
        return []


# ---------------------------------------------------------------- searching


class LanceCandidates:
    """A LanceDB table as a candidate source (:class:`~simlearn.retrieval.candidates.CandidateSource`):
    ``search(queries, k)`` returns each query's k best rows by LanceDB's dot product, through a full scan (exact) or
    through the table's vector index (``nprobes`` partitions searched, ``refine_factor`` × k of them re-ranked by
    LanceDB on the full vectors; approximate). ``where`` names the table, ``index_name`` its vector index."""

    library = "LanceDB"
    #: LanceDB's scores (1 − its float32 dot distance) may be this much further from the float64 cosines
    score_slack = _SCORE_SLACK

    def __init__(
        self,
        table: Any,
        size: int,
        dim: int,
        exact: bool,
        where: str,
        index_name: str = "",
        nprobes: int = 20,
        refine_factor: int | None = 4,
    ) -> None:
        self.table, self.size, self.dim, self.exact = table, int(size), int(dim), bool(exact)
        self.where, self.index_name = where, index_name
        self.nprobes, self.refine_factor = nprobes, refine_factor

    def describe(self) -> str:
        if self.exact:
            return f"exact (LanceDB full-scan index, {self.where}; re-scored in float64)"
        return (
            f"APPROXIMATE (LanceDB {self.index_name} index, {self.where}, nprobes={self.nprobes}, refine_factor="
            f"{self.refine_factor}: its candidates re-scored in float64, but nearer items it did not visit can be "
            f"missing; db_search=exact is exact)"
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``, (len(queries), k): float64 ``1 - distance`` (LanceDB's dot distance is 1 - x·y),
        descending, and the int64 rows (ids); -inf and -1 where LanceDB returned fewer than k."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        builder = self.table.search(list(queries), vector_column_name="vector").distance_type("dot").limit(int(k))
        if self.exact:
            builder = builder.bypass_vector_index()
        else:
            builder = builder.nprobes(int(self.nprobes))
            if self.refine_factor:
                builder = builder.refine_factor(int(self.refine_factor))
        distances, rows = _per_query(builder.select(["id", "_distance"]).to_arrow(), len(queries), k)
        return 1.0 - distances, rows  # -inf where LanceDB returned fewer (distance inf)


def _per_query(result: Any, num_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A LanceDB answer to a batch of queries (rows of ``query_index``, ``id``, ``_distance``) as ``(distances,
    rows)`` (num_queries, k), nearest first (equal distances by id): float64, inf where it returned fewer than k, and
    int64 ids, -1 there."""
    distances = np.full((num_queries, k), np.inf)
    rows = np.full((num_queries, k), -1, dtype=np.int64)
    if result.num_rows:
        query = (
            result.column("query_index").to_numpy()
            if "query_index" in result.column_names
            else np.zeros(result.num_rows, dtype=np.int64)
        )
        distance = result.column("_distance").to_numpy().astype(np.float64)
        ids = result.column("id").to_numpy().astype(np.int64)
        order = np.lexsort((ids, distance, query))  # by query, then best first
        query, distance, ids = query[order], distance[order], ids[order]
        starts = np.searchsorted(query, query, side="left")
        place = np.arange(len(query)) - starts
        keep = place < k
        distances[query[keep], place[keep]] = distance[keep]
        rows[query[keep], place[keep]] = ids[keep]
    return distances, rows


class LanceCodes:
    """A table's ``code`` column searched by LanceDB with the Hamming distance, as a binary index with faiss's
    ``search(codes, k) -> (distances, rows)`` for :class:`~simlearn.retrieval.codes.CodeIndex`: a full scan (``exact``;
    LanceDB's order among equal distances is its own, which the code index replaces by the tie rule) or the table's
    hamming index on ``code`` (IVF_FLAT / IVF_HNSW_FLAT, ``nprobes`` partitions searched; approximate)."""

    def __init__(self, table: Any, bits: int, exact: bool, nprobes: int = 20) -> None:
        self.table, self.bits, self.exact, self.nprobes = table, int(bits), bool(exact), int(nprobes)

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` (len(query_codes), k): int64 Hamming distances and ids, nearest first; rows -1 (and
        distance bits + 1) where LanceDB returned fewer than k."""
        query_codes = np.ascontiguousarray(query_codes, dtype=np.uint8)
        builder = self.table.search(list(query_codes), vector_column_name="code").distance_type("hamming")
        builder = builder.limit(int(k))
        builder = builder.bypass_vector_index() if self.exact else builder.nprobes(self.nprobes)
        distances, rows = _per_query(builder.select(["id", "_distance"]).to_arrow(), len(query_codes), k)
        return np.where(rows < 0, self.bits + 1, distances).astype(np.int64), rows


#: db_search= values
SEARCH_MODES = ("auto", "exact", "index", "memory")


def candidates(
    contents: TableContents, mode: str = "auto", nprobes: int = 20, refine_factor: int | None = 4
) -> LanceCandidates | CodeIndex | None:
    """How to search a table read by :func:`read_table`: a candidate source over LanceDB (``exact``: a full
    scan, exactly simlearn's exact search; ``index``: its vector index, approximate; ``auto``: the index when the
    table has one, else the full scan), or None for ``memory`` (simlearn's own exact search of the embeddings, no
    LanceDB query at all). A table of codes: the same over its ``code`` column by Hamming distance
    (:func:`code_candidates`)."""
    if mode not in SEARCH_MODES:
        raise UserError(f"db_search={mode!r} is not a search mode; valid: {list(SEARCH_MODES)}.")
    if mode == "memory":
        return None
    if contents.codes is not None:
        return code_candidates(contents, mode, nprobes)
    if mode == "index" and not contents.indexed:
        raise UserError(
            f"db_search=index but the LanceDB table {contents.name!r} has no vector index; build one with "
            f"simlearn-embed … db_index=IVF_PQ, or search it exactly with db_search=exact."
        )
    norms = row_norms(contents.embeddings)
    if not np.all(np.abs(norms - 1) <= _UNIT_TOLERANCE):
        # LanceDB's dot product of vectors that are not unit is no cosine: simlearn-embed never writes such rows
        log.warning("the vectors of %s are not unit length: searched in memory, not through LanceDB", contents.name)
        return None
    approximate = mode == "index" or (mode == "auto" and bool(contents.indexed))
    return LanceCandidates(
        contents.table,
        size=len(contents.embeddings),
        dim=contents.embeddings.shape[1],
        exact=not approximate,
        where=f"table {contents.name!r} of {contents.database}",
        index_name="+".join(contents.indexed) if approximate else "",
        nprobes=nprobes,
        refine_factor=refine_factor,
    )


def code_candidates(contents: TableContents, mode: str = "auto", nprobes: int = 20) -> CodeIndex:
    """A code table searched by LanceDB (:class:`LanceCodes`) as a :class:`~simlearn.retrieval.codes.CodeIndex`:
    ``exact`` a full scan (simlearn's exact Hamming ranking, ties to the lower row), ``index`` its hamming index on
    ``code`` (approximate), ``auto`` the index when there is one; ``rerank=N`` (``CodeIndex.reranking``) re-scores
    the N nearest with the float ``vector`` column, in memory."""
    from simlearn.retrieval.codes import CodeIndex  # codes imports torch; this module is read without it

    if contents.codes is None:
        raise UserError(f"the LanceDB table {contents.name!r} holds no 'code' column; {_HINT} with a head=hash model.")
    if mode == "index" and not contents.indexed_codes:
        raise UserError(
            f"db_search=index but the LanceDB table {contents.name!r} has no index on its codes; build one with "
            f"simlearn-embed … db_index=IVF_FLAT (or IVF_HNSW_FLAT), or search it exactly with db_search=exact."
        )
    approximate = mode == "index" or (mode == "auto" and bool(contents.indexed_codes))
    where = f"table {contents.name!r} of {contents.database}"
    method = (
        f"LanceDB's {'+'.join(contents.indexed_codes)} hamming index ({where}, nprobes={nprobes}; APPROXIMATE: "
        f"nearer items it did not visit can be missing; db_search=exact is exact)"
        if approximate
        else f"LanceDB's Hamming full scan ({where})"
    )
    bits = contents.codes.shape[1] * 8
    return CodeIndex(
        contents.codes,
        "lancedb",
        index=LanceCodes(contents.table, bits, exact=not approximate, nprobes=nprobes),
        library="LanceDB",
        approximate=approximate,
        method=method,
    )
