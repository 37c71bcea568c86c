"""Code galleries: simlearn-embed writes a hashing model's packed codes (npz, parquet), and simlearn-search /
simlearn-serve search them by Hamming distance through the code index (the same items as a brute force), optionally
re-ranked by the float embeddings; a code gallery with a float model (or the reverse) is one line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from simlearn.errors import UserError
from simlearn.retrieval import Gallery, pack_codes, search_gallery, search_index
from simlearn.retrieval.codes import check_code_search, hamming_distances

BITS = 16


def _model(bits: int | None) -> SimpleNamespace:
    head = SimpleNamespace(code_bits=bits) if bits else SimpleNamespace()
    return SimpleNamespace(embedding_dim=BITS, path=Path("/nowhere/model.ckpt"), encoder=SimpleNamespace(head=head))


def _arrays(n: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    """A hashing model's arrays: few distinct codes (many Hamming ties) and distinct float relaxations."""
    rng = np.random.default_rng(seed)
    signs = np.sign(rng.normal(size=(6, BITS)))[rng.integers(0, 6, n)]
    signs[rng.random((n, BITS)) < 0.1] *= -1  # a few flipped bits: distances 0, 1, 2, … with many ties
    embeddings = (signs * rng.uniform(0.2, 1.0, (n, BITS))).astype(np.float32)
    return {
        "embeddings": embeddings,
        "codes": pack_codes(embeddings),
        "labels": np.arange(n) % 3,
        "index": np.arange(n),
    }


def _hamming_brute_force(query_codes: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """Each query's k nearest by Hamming distance, equal distances to the lower gallery index (a stable sort)."""
    return np.argsort(hamming_distances(query_codes, codes), axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("code_search", ["exact", "Flat"])
def test_a_code_gallery_is_searched_by_hamming_distance_as_a_brute_force(code_search):
    arrays, queries = _arrays(), _arrays(9, seed=1)["embeddings"]
    gallery = Gallery.from_arrays(arrays, Path("g.npz"), _model(BITS))
    np.testing.assert_array_equal(gallery.codes, arrays["codes"])
    found = search_gallery(queries, gallery, 7, index=search_index(gallery, code_search=code_search))
    expected = _hamming_brute_force(pack_codes(queries), arrays["codes"], 7)
    np.testing.assert_array_equal(found.indices, expected)
    distances = np.take_along_axis(hamming_distances(pack_codes(queries), arrays["codes"]), expected, axis=1)
    np.testing.assert_allclose(found.cosines, 1 - 2 * distances / BITS)  # the sign vectors' cosines
    assert found.exact and "Hamming" in found.method
    # an item's neighbours (its own row left out): the brute force without it
    own = search_gallery(arrays["embeddings"][:3], gallery, 4, index=search_index(gallery), exclude=np.arange(3))
    for row in range(3):
        ranked = _hamming_brute_force(arrays["codes"][row : row + 1], arrays["codes"], 5)[0]
        assert own.indices[row].tolist() == [i for i in ranked if i != row][:4]


def test_float_reranking_is_the_float_search_over_the_hamming_candidates():
    arrays, queries = _arrays(), _arrays(9, seed=1)["embeddings"]
    gallery = Gallery.from_arrays(arrays, Path("g.npz"), _model(BITS))
    depth, k = 20, 5
    found = search_gallery(queries, gallery, k, index=search_index(gallery, rerank=depth))
    candidates = _hamming_brute_force(pack_codes(queries), arrays["codes"], depth)
    g = arrays["embeddings"].astype(np.float64)
    q = queries.astype(np.float64)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
    for row in range(len(q)):
        ordered = sorted(candidates[row].tolist(), key=lambda i: (-cos[row, i], i))
        assert found.indices[row].tolist() == ordered[:k]
    assert not found.exact and "re-ranked" in found.method
    np.testing.assert_allclose(found.cosines, np.take_along_axis(cos, found.indices, axis=1), atol=1e-12)


def test_a_code_gallery_and_a_float_model_or_the_reverse_are_one_line():
    arrays = _arrays()
    with pytest.raises(UserError, match="holds binary codes .* makes float embeddings"):
        Gallery.from_arrays(arrays, Path("g.npz"), _model(None))
    floats = {name: value for name, value in arrays.items() if name != "codes"}
    with pytest.raises(UserError, match="holds float embeddings only, but .* is a hashing model"):
        Gallery.from_arrays(floats, Path("g.npz"), _model(BITS))
    with pytest.raises(UserError, match="'codes' of uint8 \\(60, 2\\), but 60 items of the 32-bit codes"):
        Gallery.from_arrays(arrays, Path("g.npz"), SimpleNamespace(**{**vars(_model(32)), "embedding_dim": BITS}))
    float_gallery = Gallery.from_arrays(floats, Path("g.npz"), _model(None))
    with pytest.raises(UserError, match="rerank=100 re-ranks the Hamming candidates"):
        search_index(float_gallery, rerank=100)
    code_gallery = Gallery.from_arrays(arrays, Path("g.npz"), _model(BITS))
    with pytest.raises(UserError, match="searched by Hamming distance"):  # not by the floats, nor post-processed
        search_gallery(arrays["embeddings"][:2], code_gallery, 3)
    for factory, rerank, fragment in (("IVF", None, "code_index='IVF'"), ("exact", 0, "rerank=0")):
        with pytest.raises(UserError, match=fragment):
            check_code_search(factory, rerank)


def test_embed_writes_the_codes_to_the_npz_and_a_binary_parquet_column(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from simlearn.inference.embedding_files import write_parquet

    arrays = {**_arrays(10), "class_names": np.array(["a", "b", "c"])}
    write_parquet(tmp_path / "e.parquet", {"test": arrays}, "/nowhere/model.ckpt")
    column = pq.read_table(tmp_path / "e.parquet").column("code")
    assert str(column.type) == "fixed_size_binary[2]"
    packed = np.frombuffer(b"".join(column.to_pylist()), dtype=np.uint8).reshape(-1, 2)
    np.testing.assert_array_equal(packed, arrays["codes"])


@pytest.mark.slow
def test_embed_search_and_serve_a_code_gallery_end_to_end(tmp_path, capfd, trained_run):
    """A 16-bit digits model: simlearn-embed writes the codes, simlearn-search returns the brute-force Hamming items
    and the service the same, from the npz and from a LanceDB table (re-ranked by floats: the same as the npz's); a
    float checkpoint searching the code gallery, and a PQ index on the codes, are one line each."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from simlearn.config import compose_config
    from simlearn.serve.service import open_service

    from .helpers import run_main, run_training
    from .test_errors import assert_clean_failure

    run = tmp_path / "run"
    run_training(run, "head=hash", f"head.bits={BITS}", "loss=contrastive", "trainer.max_epochs=1")
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    embedded = run_main("simlearn.cli.embed", f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'emb'}", "splits=[test]",
                        f"hydra.run.dir={tmp_path / 'e'}", capfd=capfd)  # fmt: skip
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    npz = np.load(tmp_path / "emb" / "test.npz")
    np.testing.assert_array_equal(npz["codes"], pack_codes(npz["embeddings"]))
    queries = tmp_path / "queries"
    digits = load_digits()
    for index in (1, 4, 7):
        (queries / str(digits.target[index])).mkdir(parents=True)
        image = (digits.images[index] / 16 * 255).round().astype(np.uint8)
        Image.fromarray(image).save(queries / str(digits.target[index]) / f"{index}.png")
    results, gallery = tmp_path / "search.json", tmp_path / "emb" / "test.npz"
    searched = run_main("simlearn.cli.search", f"ckpt_path={ckpt}", f"query={queries}", f"gallery={gallery}", "k=5",
                        f"results={results}", "grid=null", f"hydra.run.dir={tmp_path / 's'}", capfd=capfd)  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-2000:]
    found = json.loads(results.read_text())
    service = open_service(compose_config(
        [f"ckpt_path={ckpt}", f"gallery={gallery}", "device=cpu"], config_name="serve",
        output_dir=tmp_path / "v"))  # fmt: skip
    for result in found:
        query = service.model.embed([Path(result["query"])])
        expected = _hamming_brute_force(pack_codes(query), npz["codes"], 5)[0].tolist()
        assert [item["id"] for item in result["results"]] == expected
        assert [item["id"] for item in service.search_vector(query[0], 5)] == expected
    float_ckpt = next((trained_run / "checkpoints").glob("*.ckpt"))
    refused = run_main("simlearn.cli.search", f"ckpt_path={float_ckpt}", f"query={queries}", f"gallery={gallery}",
                       f"hydra.run.dir={tmp_path / 'f'}", capfd=capfd)  # fmt: skip
    assert_clean_failure(refused, "holds binary codes", "makes float embeddings")
    # a LanceDB table of the codes: simlearn-search and the service through LanceDB's Hamming search, the same items
    db = tmp_path / "codes.lancedb"
    pq_index = run_main("simlearn.cli.embed", f"ckpt_path={ckpt}", f"db={db}", "db_index=IVF_PQ", "splits=[test]",
                        f"out_dir={tmp_path / 'x'}", f"hydra.run.dir={tmp_path / 'd'}", capfd=capfd)  # fmt: skip
    assert_clean_failure(pq_index, "db_index='IVF_PQ': a hashing model's codes", "IVF_FLAT")
    assert not (tmp_path / "x").exists()  # refused before anything was embedded
    with_db = run_main("simlearn.cli.embed", f"ckpt_path={ckpt}", f"db={db}", "splits=[test]",
                       f"out_dir={tmp_path / 'x'}", f"hydra.run.dir={tmp_path / 'd'}", capfd=capfd)  # fmt: skip
    assert with_db.returncode == 0, with_db.stderr[-2000:]
    from simlearn.retrieval import vectordb

    np.testing.assert_array_equal(vectordb.read_table(db).codes, npz["codes"])
    db_json = tmp_path / "db_search.json"
    searched = run_main("simlearn.cli.search", f"ckpt_path={ckpt}", f"query={queries}", f"gallery={db}", "k=5",
                        f"results={db_json}", "grid=null", f"hydra.run.dir={tmp_path / 't'}", capfd=capfd)  # fmt: skip
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert "LanceDB's Hamming full scan" in searched.stdout
    assert [r["results"] for r in json.loads(db_json.read_text())] == [r["results"] for r in found]
    db_service = open_service(compose_config(
        [f"ckpt_path={ckpt}", f"gallery={db}", "device=cpu", "rerank=20"], config_name="serve",
        output_dir=tmp_path / "w"))  # fmt: skip
    reranked = open_service(compose_config(
        [f"ckpt_path={ckpt}", f"gallery={gallery}", "device=cpu", "rerank=20"], config_name="serve",
        output_dir=tmp_path / "u"))  # fmt: skip
    for result in found:
        query = db_service.model.embed([Path(result["query"])])
        want = [item["id"] for item in reranked.search_vector(query[0], 5)]
        assert [item["id"] for item in db_service.search_vector(query[0], 5)] == want
