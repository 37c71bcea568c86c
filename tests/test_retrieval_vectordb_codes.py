"""A hashing model's LanceDB table (simlearn.retrieval.vectordb): its packed codes in a ``code`` column of LanceDB's
binary vector type, searched by LanceDB's Hamming distance with the same items as a brute force under the tie rule
(many ties), re-ranked by the float column, through a hamming IVF index (approximate, said so), and every mismatch of
table and model one line."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from simlearn.errors import UserError
from simlearn.retrieval import load_gallery, search_gallery, search_index, vectordb
from simlearn.retrieval.codes import hamming_distances, pack_codes

pytest.importorskip("lancedb")

BITS = 16


def _model(bits: int | None) -> SimpleNamespace:
    head = SimpleNamespace(code_bits=bits) if bits else SimpleNamespace()
    return SimpleNamespace(embedding_dim=BITS, path=Path("/nowhere/model.ckpt"), encoder=SimpleNamespace(head=head))


def _arrays(n: int, seed: int, distinct: int = 6) -> dict[str, np.ndarray]:
    """A hashing model's arrays: codes drawn from a few, with a few flipped bits (distances 0, 1, 2, … with many
    ties), and distinct float relaxations of those signs."""
    rng = np.random.default_rng(seed)
    signs = np.sign(rng.normal(size=(distinct, BITS)))[rng.integers(0, distinct, n)]
    signs[rng.random((n, BITS)) < 0.05] *= -1
    embeddings = (signs * rng.uniform(0.2, 1.0, (n, BITS))).astype(np.float32)
    codes = pack_codes(embeddings)
    return {"embeddings": embeddings, "codes": codes, "index": np.arange(n), "labels": np.arange(n) % 3}


def _brute(query_codes: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Each query's k nearest by Hamming distance, equal distances to the lower row (a stable sort)."""
    return np.argsort(hamming_distances(query_codes, codes), axis=1, kind="stable")[:, :k]


def _gallery(db: Path, bits: int | None = BITS, **cfg):
    return load_gallery(db, _model(bits), OmegaConf.create({"db_search": "auto", **cfg}))


@pytest.fixture(scope="module")
def code_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("codes") / "codes.lancedb"
    arrays = _arrays(400, seed=0)
    vectordb.write_embeddings(db, {"test": arrays}, None)
    return db, arrays


def test_the_codes_are_a_binary_vector_column_that_reads_back(code_db):
    db, arrays = code_db
    contents = vectordb.read_table(db)
    code_type = contents.table.schema.field("code").type
    assert str(code_type) == "fixed_size_list<item: uint8>[2]"
    np.testing.assert_array_equal(contents.codes, arrays["codes"])
    assert contents.indexed_codes == []
    gallery = _gallery(db)
    np.testing.assert_array_equal(gallery.codes, arrays["codes"])
    assert gallery.candidates.library == "LanceDB" and gallery.candidates.exact


def test_lancedb_hamming_search_is_the_brute_force_with_the_tie_rule(code_db):
    db, arrays = code_db
    gallery = _gallery(db)
    queries = _arrays(25, seed=1)["embeddings"]
    q = pack_codes(queries)
    # LanceDB's own answer: the right distances, its own order among equal ones
    distances, rows = gallery.candidates.index.search(q, 30)
    np.testing.assert_array_equal(distances, np.take_along_axis(hamming_distances(q, arrays["codes"]), rows, axis=1))
    for k in (1, 7, 40):
        want = _brute(q, arrays["codes"], k)
        found = search_gallery(queries, gallery, k, index=search_index(gallery))
        np.testing.assert_array_equal(found.indices, want)
        d = np.take_along_axis(hamming_distances(q, arrays["codes"]), want, axis=1)
        np.testing.assert_allclose(found.cosines, 1 - 2 * d / BITS)
        assert found.exact and "LanceDB's Hamming full scan" in found.method
    # ties everywhere: most queries' 7th distance is shared by more items than fit
    dist = hamming_distances(q, arrays["codes"])
    seventh = np.take_along_axis(dist, _brute(q, arrays["codes"], 7)[:, -1:], axis=1)
    assert ((dist <= seventh).sum(axis=1) > 7).mean() > 0.8
    # an item's neighbours, its own row left out
    own = search_gallery(arrays["embeddings"][:5], gallery, 6, index=search_index(gallery), exclude=np.arange(5))
    for row in range(5):
        ranked = _brute(arrays["codes"][row : row + 1], arrays["codes"], 7)[0]
        assert own.indices[row].tolist() == [i for i in ranked if i != row][:6]


def test_rerank_rescores_the_lancedb_candidates_with_the_float_column(code_db):
    db, arrays = code_db
    gallery = _gallery(db)
    queries = _arrays(12, seed=2)["embeddings"]
    depth, k = 25, 6
    found = search_gallery(queries, gallery, k, index=search_index(gallery, rerank=depth))
    candidates = _brute(pack_codes(queries), arrays["codes"], depth)
    g = arrays["embeddings"].astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = queries.astype(np.float64) / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    for row in range(len(q)):
        cos = (g[candidates[row]] * q[row]).sum(axis=1)
        want = candidates[row][np.lexsort((candidates[row], -cos))][:k]
        assert found.indices[row].tolist() == want.tolist()
    assert not found.exact and "re-ranked by the float embeddings" in found.method


def test_a_hamming_ivf_index_is_built_said_and_ordered_by_the_rule(tmp_path):
    rng = np.random.default_rng(3)
    centres = np.sign(rng.normal(size=(20, 64)))
    signs = centres[rng.integers(0, 20, 3000)]
    signs[rng.random(signs.shape) < 0.1] *= -1
    codes = pack_codes(signs)
    table = vectordb.write_embeddings(tmp_path / "db", {"test": {"embeddings": signs.astype(np.float32),
                                                                 "codes": codes}})  # fmt: skip
    with pytest.raises(UserError, match=r"LanceDB builds as \['IVF_FLAT', 'IVF_HNSW_FLAT'\] only"):
        vectordb.create_index(table, "IVF_PQ", codes=True)
    built = vectordb.create_index(table, "IVF_FLAT", num_partitions=8, codes=True)
    assert built == "IVF_FLAT hamming (num_partitions=8)"
    contents = vectordb.read_table(tmp_path / "db")
    assert contents.indexed_codes == ["IvfFlat"] and contents.indexed == []
    source = vectordb.candidates(contents, "auto", nprobes=4)
    assert not source.exact and "APPROXIMATE" in source.describe()
    assert vectordb.candidates(contents, "exact").exact
    q = codes[:50]
    distances, rows = source.hamming(q, 10)
    # among so many ties, which items is the rule's business: the distances found are the exact ones nearly always
    exact_distances = np.take_along_axis(hamming_distances(q, codes), _brute(q, codes, 10), axis=1)
    assert np.mean(distances == exact_distances) > 0.9
    keys = distances.astype(np.int64) * len(codes) + rows  # ordered by (distance, row)
    assert (np.diff(keys, axis=1) > 0).all()
    np.testing.assert_array_equal(distances, np.take_along_axis(hamming_distances(q, codes), rows, axis=1))


def test_a_table_and_a_model_of_other_kinds_are_one_line(code_db, tmp_path):
    db, arrays = code_db

    def refused(match, *args, **cfg):
        with pytest.raises(UserError, match=match) as error:
            gallery = _gallery(*args, **cfg)
            search_index(gallery, code_search=cfg.get("code_index", "exact"))
        assert "\n" not in str(error.value)

    refused("holds binary codes .* makes float embeddings", db, None)
    floats = tmp_path / "floats.lancedb"
    vectordb.write_embeddings(floats, {"test": {"embeddings": arrays["embeddings"]}})
    refused("holds float embeddings only, but .* is a hashing model", floats)
    refused("db_search=index but the LanceDB table 'embeddings' has no index on its codes", db, db_search="index")
    refused("code_index=.Flat. searches codes in memory, .*; set db_search=memory", db, code_index="Flat")
    # db_search=memory: the codes searched in memory, as an npz's, by code_index
    in_memory = _gallery(db, db_search="memory")
    assert in_memory.candidates is None
    index = search_index(in_memory, code_search="Flat")
    assert index.library == "faiss binary"
    queries = arrays["embeddings"][:4]
    found = search_gallery(queries, in_memory, 5, index=index)
    np.testing.assert_array_equal(found.indices, _brute(pack_codes(queries), arrays["codes"], 5))
    with pytest.raises(UserError, match="some splits hold binary codes and some do not"):
        vectordb.write_embeddings(tmp_path / "mixed", {"a": arrays, "b": {"embeddings": arrays["embeddings"]}})
