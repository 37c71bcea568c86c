"""The search service (simlearn/serve/service.py): opening it (bad splits and models), a LanceDB gallery,
post-processing. (Its map and catalogue views without a model: tests/test_serve_views.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from simlearn.errors import UserError
from simlearn.serve import create_app, open_service

from .serving import (
    serve_config,
)


def test_bad_splits_and_models_are_refused_in_one_line(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    bad = [
        (serve_config(ckpt, "split:tset", tmp_path / "cache"), "valid: split:train, split:val, split:test"),
        (serve_config(ckpt, "split:", tmp_path / "cache"), "names no split"),
        (serve_config(ckpt, "split:probe", tmp_path / "cache"), "has no 'probe' split"),
        (serve_config(None, None, tmp_path / "cache"), "ckpt_path=<run>"),
        (serve_config(ckpt, None, tmp_path / "cache", f"run_dir={trained_run}"), "not both"),
        (serve_config(None, None, tmp_path / "cache", f"run_dir={tmp_path / 'nothing'}"), "not a folder"),
        (serve_config(None, None, tmp_path / "cache", f"run_dir={tmp_path}"), "no checkpoints"),
    ]
    for cfg, expected in bad:
        with pytest.raises(UserError, match=expected) as refused:
            open_service(cfg)
        assert "\n" not in str(refused.value) and len(str(refused.value)) < 400
    assert not (tmp_path / "cache").exists()


def test_a_lancedb_gallery_is_served_like_the_folder_it_was_made_of(service, client, tmp_path):
    """The folder gallery's embeddings, labels and files in a LanceDB table: searched through LanceDB (exact full
    scan), the service gives the same answers and the same images."""
    from simlearn.retrieval import vectordb

    gallery = service.gallery
    classes = sorted(gallery.classes)
    arrays = {
        "embeddings": gallery.embeddings,
        "index": np.arange(len(gallery.embeddings)),
        "labels": np.array([classes.index(label) for label in gallery.labels]),
        "class_names": np.array(classes),
        "paths": np.array(gallery.paths),
    }
    vectordb.write_embeddings(tmp_path / "gallery.lancedb", {"test": arrays}, service.model.path)
    cfg = serve_config(service.model.path, tmp_path / "gallery.lancedb", tmp_path / "cache", "db_search=exact")
    from_db = open_service(cfg)
    assert "LanceDB" in from_db.method and from_db.method.startswith("exact")
    db_client = TestClient(create_app(from_db))
    for i in (0, 33, 71):
        want = client.get(f"/items/{i}/neighbours", params={"k": 8}).json()["results"]
        got = db_client.get(f"/items/{i}/neighbours", params={"k": 8}).json()["results"]
        assert [r["id"] for r in got] == [r["id"] for r in want]
        assert [r["class_name"] for r in got] == [r["class_name"] for r in want]
        np.testing.assert_allclose([r["cosine"] for r in got], [r["cosine"] for r in want], atol=1e-6)
        assert db_client.get(f"/items/{i}").content == client.get(f"/items/{i}").content
    assert db_client.get("/map").json()["labels"] == client.get("/map").json()["labels"]


def test_the_service_re_ranks_with_the_search_commands_post_processing(service):
    # serve postprocess=[aqe]: an item's neighbours are those of postprocessed_top_k (its own row left out), each with
    # its own cosine; the answer says how it searched
    from simlearn.retrieval.postprocess import AlphaQueryExpansion, postprocessed_top_k
    from simlearn.serve.service import SearchService

    steps = [AlphaQueryExpansion(n=3)]
    post = SearchService(service.model, service.gallery, postprocess=steps)
    answer = post.neighbours(3, 4)
    vector = service.gallery.embeddings[3][None]
    cos, idx = postprocessed_top_k(vector, service.gallery.embeddings, 4, steps, exclude=np.array([3]))
    assert [r["id"] for r in answer["results"]] == idx[0].tolist()
    np.testing.assert_allclose([r["cosine"] for r in answer["results"]], cos[0], atol=1e-6)
    assert "post-processed: aqe" in answer["search"] and "post-processed" not in service.method
