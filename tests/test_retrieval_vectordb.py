"""The LanceDB gallery (simlearn.retrieval.vectordb): simlearn-embed db=PATH writes every column, the table reads
back as it was
written, the exact search through LanceDB equals simlearn's own exact search (exact duplicates and near-ties
included), an approximate index is said to be one, simlearn-search searches a database, and every bad database is
one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.inference import load_model
from simlearn.inference.embedding_files import embed_dataset
from simlearn.inference.search import search
from simlearn.retrieval import load_gallery, vectordb
from simlearn.retrieval.exact import top_k
from simlearn.retrieval.inputs import prepare_gallery
from simlearn.retrieval.vectors import unit_rows

from .helpers import run_cli, run_main


@pytest.fixture(scope="module")
def embedded(trained_run, tmp_path_factory):
    """The trained digits checkpoint embedded (as simlearn-embed db=PATH does) into npz files and a LanceDB table,
    and a query folder of one PNG per digit."""
    root = tmp_path_factory.mktemp("vectordb")
    ckpt = next((trained_run / "checkpoints").glob("best-epoch*.ckpt"))
    db = root / "digits.lancedb"
    written = embed_dataset(compose_config([f"ckpt_path={ckpt}", f"db={db}", "device=cpu"], "embed", root / "embed"))
    assert written["db"] == db
    digits = load_digits()
    for i in range(10):
        index = int(np.flatnonzero(digits.target == i)[-1])
        path = root / "query" / str(i) / f"{index}.png"
        path.parent.mkdir(parents=True)
        Image.fromarray((digits.images[index] / 16 * 255).round().astype(np.uint8)).save(path)
    return {"root": root, "ckpt": ckpt, "db": db, "npz": root / "embed", "query": root / "query"}


def search_cfg(embedded, out, *overrides):
    return compose_config(
        [
            f"ckpt_path={embedded['ckpt']}",
            f"query={embedded['query']}",
            f"gallery={embedded['db']}",
            "device=cpu",
            "grid=null",
            "results=null",
            *overrides,
        ],
        config_name="search",
        output_dir=out,
    )


def test_every_column_round_trips_from_simlearn_embed(embedded):
    contents = vectordb.read_table(embedded["db"])
    splits = ["train", "val", "test"]
    npz = {split: np.load(embedded["npz"] / f"{split}.npz") for split in splits}
    sizes = [len(npz[s]["embeddings"]) for s in splits]
    assert contents.name == vectordb.TABLE and len(contents.embeddings) == sum(sizes) == 1797
    assert contents.splits == [s for s, n in zip(splits, sizes, strict=True) for _ in range(n)]
    expected = {key: np.concatenate([npz[s][key] for s in splits]) for key in ("index", "labels", "digit", "parity")}
    np.testing.assert_array_equal(contents.indices, expected["index"])
    np.testing.assert_array_equal(contents.labels, expected["labels"])
    class_names = npz["test"]["class_names"].tolist()
    assert contents.class_names == class_names and contents.label_field == "digit"
    assert contents.row_class_names == [class_names[i] for i in expected["labels"]]
    assert set(contents.fields) == {"digit", "parity", "magnitude"}
    np.testing.assert_array_equal(contents.fields["digit"], expected["digit"])
    np.testing.assert_array_equal(contents.fields["parity"], expected["parity"])
    embeddings = np.concatenate([npz[s]["embeddings"] for s in splits])
    np.testing.assert_array_equal(contents.embeddings, unit_rows(embeddings, np.float32, tolerance=1e-6))
    assert contents.ckpt_path == str(embedded["ckpt"].resolve()) and contents.paths is None
    assert contents.ids == [f"{s}[{i}]" for s, i in zip(contents.splits, expected["index"].tolist(), strict=True)]
    # the gallery the service and simlearn-search get: names, labels and every label field
    gallery = load_gallery(embedded["db"], load_model(embedded["ckpt"]), compose_config([], "search"))
    assert gallery.ids == contents.ids and gallery.labels == contents.row_class_names
    np.testing.assert_array_equal(gallery.fields["magnitude"], contents.fields["magnitude"])


def test_paths_and_awkward_fields_round_trip(tmp_path):
    """Files' paths, a label field named like a reserved column, a 2-D field and non-unit vectors (stored unit)."""
    rng = np.random.default_rng(0)
    n = 40
    arrays = {
        "embeddings": rng.standard_normal((n, 6)).astype(np.float32) * 3,
        "index": np.arange(100, 100 + n),
        "labels": rng.integers(0, 3, n),
        "class_names": np.array(["cat", "dog", "zebra crossing"]),
        "label_field": np.array("kind"),
        "kind": rng.integers(0, 3, n),
        "label": rng.integers(0, 9, n),  # a label field that clashes with the label column
        "attributes": rng.random((n, 4)).astype(np.float32),
        "paths": np.array([f"/photos/é {i}.jpg" for i in range(n)]),
    }
    vectordb.write_embeddings(tmp_path / "db", {"val": arrays}, None)
    contents = vectordb.read_table(tmp_path / "db" / "embeddings.lance")  # the table folder itself
    assert contents.paths == arrays["paths"].tolist()
    assert contents.row_class_names == [arrays["class_names"][i] for i in arrays["labels"]]
    np.testing.assert_array_equal(contents.labels, arrays["labels"])
    np.testing.assert_array_equal(contents.fields["label"], arrays["label"])
    np.testing.assert_array_equal(contents.fields["attributes"], arrays["attributes"])
    np.testing.assert_array_equal(contents.embeddings, unit_rows(arrays["embeddings"], np.float32))
    assert contents.ckpt_path is None and contents.ids[0] == "val[100]"


def tied_gallery(n: int = 2500, d: int = 24) -> np.ndarray:
    """Random unit vectors with runs of exact duplicates and of near-ties (1e-7 apart) among them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[50:70] = x[0]  # exact duplicates of item 0, all tied with it
    x[300:340] = x[1] + (rng.standard_normal((40, d)) * 1e-7).astype(np.float32)  # near-ties
    x[900:905] = x[2]
    return unit_rows(x, np.float32)


def test_exact_search_through_lancedb_equals_simlearns_exact_search(tmp_path):
    x = tied_gallery()
    arrays = {"embeddings": x, "index": np.arange(len(x)), "labels": np.arange(len(x)) % 7}
    vectordb.write_embeddings(tmp_path / "db", {"test": arrays}, None)
    contents = vectordb.read_table(tmp_path / "db")
    source = vectordb.candidates(contents, "exact")
    assert source.exact and "exact (LanceDB" in source.describe()
    rng = np.random.default_rng(4)
    queries = np.concatenate([x[[0, 1, 2, 55, 310]], x[1:2] + 1e-7, rng.standard_normal((30, x.shape[1]))])
    queries = queries.astype(np.float32)
    prepared_gallery = prepare_gallery(contents.embeddings)
    for k in (1, 5, 25, 60):
        through_db = top_k(queries, contents.embeddings, k, index=source)
        own = top_k(queries, contents.embeddings, k, backend="torch")
        np.testing.assert_array_equal(through_db.indices, own.indices)
        prepared = top_k(queries, prepared_gallery, k, index=source)  # as simlearn-search and the service search
        np.testing.assert_array_equal(prepared.indices, own.indices)
        np.testing.assert_array_equal(prepared.similarities, through_db.similarities)
        np.testing.assert_allclose(through_db.similarities, own.similarities, rtol=0, atol=1e-12)
    # the exact duplicates of item 0 tie exactly and come in the order of their rows
    top = top_k(x[:1], contents.embeddings, 25, index=source).indices[0]
    assert top[:21].tolist() == [0, *range(50, 70)]
    # self-search (leave-one-out) through the database: a query's own item is never its neighbour
    loo_db = top_k(x, None, 10, exclude_self=True, index=source)
    loo = top_k(x, None, 10, exclude_self=True)
    np.testing.assert_array_equal(loo_db.indices, loo.indices)
    assert loo_db.indices[0, :3].tolist() == [50, 51, 52]


@pytest.mark.slow
def test_search_command_on_a_database_equals_the_in_memory_search(embedded, tmp_path):
    through_db = search(search_cfg(embedded, tmp_path / "a", "k=7", "db_search=exact"))
    in_memory = search(search_cfg(embedded, tmp_path / "b", "k=7", "db_search=memory"))
    assert [r["results"] for r in through_db] == [r["results"] for r in in_memory]
    assert {r["results"][0]["name"].split("[")[0] for r in through_db} <= {"train", "val", "test"}
    assert sum(r["results"][0]["same_class"] for r in through_db) >= 8  # a trained model finds its digits

    result = run_cli(
        "-m",
        "simlearn.cli.search",
        f"ckpt_path={embedded['ckpt']}",
        f"query={embedded['query']}",
        f"gallery={embedded['db']}",
        "k=3",
        f"hydra.run.dir={tmp_path / 'cli'}",
        env={"COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "search: exact (LanceDB full-scan index" in result.stdout
    written = json.loads((tmp_path / "cli" / "search.json").read_text())
    assert [r["results"] for r in written] == [r["results"][:3] for r in through_db]


def test_an_approximate_index_is_built_said_and_reordered_exactly(tmp_path):
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((20, 16))
    x = unit_rows((centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 16))).astype(np.float32))
    table = vectordb.write_embeddings(tmp_path / "db", {"test": {"embeddings": x, "index": np.arange(len(x))}})
    assert vectordb.create_index(table, "IVF_PQ", num_partitions=8, num_sub_vectors=4).startswith("IVF_PQ")
    contents = vectordb.read_table(tmp_path / "db")
    # LanceDB re-ranks refine_factor x (k + 8) of its PQ candidates on the full vectors, simlearn re-scores those
    source = vectordb.candidates(contents, "auto", nprobes=4, refine_factor=10)
    assert not source.exact and "APPROXIMATE (LanceDB" in source.describe()
    queries = x[:100] + 0.05 * rng.standard_normal((100, 16)).astype(np.float32)
    ann = top_k(queries, contents.embeddings, 10, index=source)
    exact = top_k(queries, contents.embeddings, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann.indices, exact.indices, strict=True)])
    assert recall > 0.9
    # whatever the index found is ranked by simlearn's rule: float64 cosines, descending
    found = x[ann.indices].astype(np.float64)
    cos = np.einsum("ij,ikj->ik", unit_rows(queries, np.float64), found) / np.linalg.norm(found, axis=2)
    np.testing.assert_allclose(ann.similarities, cos, rtol=0, atol=1e-12)
    assert np.all(np.diff(ann.similarities, axis=1) <= 0)
    with pytest.raises(UserError, match="db_search='fast' is not a search mode"):
        vectordb.candidates(contents, "fast")


def test_bad_databases_are_one_clear_error(embedded, tmp_path):
    loaded = load_model(embedded["ckpt"])
    cfg = compose_config([], "search")

    def refused(spec, match, **overrides):
        local = compose_config([f"{k}={v}" for k, v in overrides.items()], "search") if overrides else cfg
        with pytest.raises(UserError, match=match) as error:
            load_gallery(spec, loaded, local)
        assert "\n" not in str(error.value)

    empty = tmp_path / "empty.lancedb"
    empty.mkdir()
    refused(empty, "is not a LanceDB database: it holds no tables")
    refused(tmp_path / "missing.lancedb", "does not exist as a LanceDB database folder")
    broken = tmp_path / "broken.lancedb"
    (broken / "embeddings.lance").mkdir(parents=True)
    (broken / "embeddings.lance" / "junk").write_text("not lance")
    refused(broken, "broken.lancedb")
    # another model's embeddings (2-d)
    other = tmp_path / "other.lancedb"
    vectordb.write_embeddings(other, {"test": {"embeddings": np.eye(2, dtype=np.float32)[[0, 1, 0]]}})
    refused(other, "holds 2-d embeddings but the checkpoint .* makes 64-d")
    # two tables: which one?
    vectordb.write_embeddings(other, {"test": {"embeddings": np.eye(2, dtype=np.float32)}}, table="second")
    refused(other, r"holds the LanceDB tables \['embeddings', 'second'\]; choose one with db_table=NAME")
    refused(other, "has no LanceDB table 'third'", db_table="third")
    # no index to search through
    refused(embedded["db"], "db_search=index but the LanceDB table 'embeddings' has no vector index", db_search="index")
    # rows deleted after simlearn-embed wrote it: ids no longer 0..N-1
    changed = tmp_path / "changed.lancedb"
    shutil.copytree(embedded["db"], changed)
    vectordb.open_table(changed)[0].delete("id = 3")
    refused(changed, "its ids are not 0 … 1795")
    # a table simlearn did not write
    import lancedb
    import pyarrow as pa

    lancedb.connect(str(tmp_path / "foreign.lancedb")).create_table("t", pa.table({"x": [1, 2]}))
    refused(tmp_path / "foreign.lancedb", "has no 'vector' column")
    # writing into an existing table is refused unless db_overwrite=true, before anything is embedded
    embed_cfg = compose_config([f"ckpt_path={embedded['ckpt']}", f"db={embedded['db']}"], "embed", tmp_path / "e")
    with pytest.raises(UserError, match="already holds a table 'embeddings'.*db_overwrite=true"):
        embed_dataset(embed_cfg)
    assert not (tmp_path / "e" / "test.npz").exists()
    bad_index = compose_config([f"ckpt_path={embedded['ckpt']}", "db_index=HNSW"], "embed", tmp_path / "f")
    with pytest.raises(UserError, match="db_index='HNSW' is not a LanceDB vector index"):
        embed_dataset(bad_index)


def test_cli_refuses_a_database_of_another_model_in_one_line(embedded, tmp_path, capfd):
    other = tmp_path / "other.lancedb"
    vectordb.write_embeddings(other, {"test": {"embeddings": np.eye(3, dtype=np.float32)}})
    result = run_main(
        "simlearn.cli.search",
        f"ckpt_path={embedded['ckpt']}",
        f"query={embedded['query']}",
        f"gallery={other}",
        f"hydra.run.dir={tmp_path / 'run'}",
        capfd=capfd,
        env={"COLUMNS": "400"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "holds 3-d embeddings but the checkpoint" in errors[0], result.stderr
