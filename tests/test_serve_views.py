"""The catalogue views of the service (simlearn/serve/views.py) without a model: the organisation is
simlearn-organise's own, computed once (also under concurrent requests) and cached on disk by the embeddings and the
options; the map is a t-SNE (or PCA) of a seeded sample, cached too; bad options are one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from omegaconf import OmegaConf

from simlearn.errors import UserError
from simlearn.organise.command import organise_gallery
from simlearn.retrieval import Gallery
from simlearn.serve.views import GalleryViews, MapOptions, organise_options


def clustered_gallery(folder: Path, n: int = 80, classes: int = 4, dim: int = 16, seed: int = 0) -> Gallery:
    """``classes`` well-apart groups of unit-ish vectors, labelled by group, item ``n - 1`` an exact copy of item 3."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    e = (centres[np.arange(n) % classes] + 0.25 * rng.normal(size=(n, dim))).astype(np.float32)
    e[n - 1] = e[3]
    return Gallery(e, [str(i % classes) for i in range(n)], None, folder / "gallery.npz", folder / "gallery.faiss")


def test_the_organisation_is_simlearn_organises_computed_once_and_cached(tmp_path):
    gallery = clustered_gallery(tmp_path)
    views = GalleryViews(gallery, {"k": 4}, cache=gallery.index_path)
    found = views.organised()
    assert views.organised() is found  # once per gallery
    reference = organise_gallery(gallery, OmegaConf.create({"k": 4}))
    np.testing.assert_array_equal(found.clusters.cluster, reference.clusters.cluster)
    assert found.clusters.metrics == reference.clusters.metrics and found.clusters.metrics["ami"] > 0.99
    assert [g.tolist() for g in found.duplicates.groups] == [[3, 79]]  # the planted copy
    cached = tmp_path / "gallery.organise.npz"
    assert cached.is_file()
    # a new start reads it back instead of organising again: the same clusters, groups and uniqueness
    with mock.patch("simlearn.serve.views.organise_gallery", side_effect=AssertionError("organised again")):
        again = GalleryViews(gallery, {"k": 4}, cache=gallery.index_path).organised()
    np.testing.assert_array_equal(again.clusters.cluster, found.clusters.cluster)
    np.testing.assert_allclose(again.clusters.cosine, found.clusters.cosine)
    assert again.clusters.method == "kmeans" and again.clusters.metrics == found.clusters.metrics
    assert [g.tolist() for g in again.duplicates.groups] == [[3, 79]]
    assert again.duplicates.method == found.duplicates.method and again.duplicates.threshold == 0.999
    np.testing.assert_array_equal(again.uniqueness.order, found.uniqueness.order)
    # other options, or other embeddings, are organised again
    for other, options in (
        (gallery, {"k": 3}),
        (Gallery(gallery.embeddings[::-1].copy(), gallery.labels, None, gallery.source, gallery.index_path), {"k": 4}),
    ):
        again = mock.patch("simlearn.serve.views.organise_gallery", side_effect=RuntimeError("organised again"))
        with again, pytest.raises(RuntimeError, match="organised again"):
            GalleryViews(other, options, cache=other.index_path).organised()


def test_without_a_cache_nothing_is_written_and_k_defaults_to_at_most_ten(tmp_path):
    asked = []

    def recorded(gallery, cfg):
        asked.append(cfg.k)
        return organise_gallery(gallery, cfg)

    with mock.patch("simlearn.serve.views.organise_gallery", side_effect=recorded):
        for n in (7, 40):
            GalleryViews(clustered_gallery(tmp_path, n=n, classes=2)).organised()
    assert asked == [7, 10]  # min(10, items)
    assert list(tmp_path.iterdir()) == []


def test_two_requests_at_once_organise_once(tmp_path):
    gallery = clustered_gallery(tmp_path)
    views = GalleryViews(gallery, {"k": 4})
    calls = []

    def slow(*args, **kwargs):
        calls.append(1)
        time.sleep(0.3)  # long enough for the other thread to arrive while it works
        return organise_gallery(*args, **kwargs)

    results = []
    with mock.patch("simlearn.serve.views.organise_gallery", side_effect=slow):
        threads = [threading.Thread(target=lambda: results.append(views.organised())) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(calls) == 1 and results[0] is results[1]


def test_the_map_is_a_tsne_of_a_seeded_sample_that_keeps_neighbours_and_is_cached(tmp_path):
    gallery = clustered_gallery(tmp_path, n=120)
    options = MapOptions(projection="tsne", max_points=60)
    answer = GalleryViews(gallery, map_options=options, cache=gallery.index_path).map()
    assert answer["projection"].startswith("t-SNE") and answer["explained_variance_ratio"] is None
    assert answer["shown"] == 60 and answer["total"] == 120 and len(set(answer["ids"])) == 60
    assert answer["ids"] == sorted(answer["ids"])
    # neighbour-preserving: each point's nearest point on the map is of its group
    xy = np.stack([answer["x"], answer["y"]], axis=1)
    distances = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    labels = np.array(answer["labels"])
    assert (labels[distances.argmin(axis=1)] == labels).mean() == 1.0
    # cached: a new start draws the same map without running t-SNE
    with mock.patch("simlearn.serve.views.tsne_points", side_effect=AssertionError("t-SNE again")):
        assert GalleryViews(gallery, map_options=options, cache=gallery.index_path).map() == answer
    # another option is another map
    again = mock.patch("simlearn.serve.views.tsne_points", side_effect=RuntimeError("t-SNE again"))
    with again, pytest.raises(RuntimeError, match="t-SNE again"):
        GalleryViews(gallery, map_options=MapOptions(max_points=50), cache=gallery.index_path).map()


def test_the_map_as_pca_is_the_first_two_principal_components(tmp_path):
    gallery = clustered_gallery(tmp_path, n=50)
    answer = GalleryViews(gallery, map_options=MapOptions(projection="pca")).map()
    assert answer["projection"].startswith("PCA") and answer["ids"] == list(range(50))
    e = gallery.embeddings.astype(np.float64)
    centred = e - e.mean(axis=0)
    _, values, axes = np.linalg.svd(centred, full_matrices=False)
    for column, axis in zip(("x", "y"), axes[:2], strict=True):
        expected, got = centred @ axis, np.array(answer[column])
        assert min(np.abs(got - expected).max(), np.abs(got + expected).max()) < 1e-5
    np.testing.assert_allclose(answer["explained_variance_ratio"], values[:2] ** 2 / (values**2).sum(), atol=1e-3)


def test_the_map_of_2d_embeddings_is_as_is(tmp_path):
    e = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    gallery = Gallery(e, [str(i % 3) for i in range(50)], None, tmp_path, None)
    answer = GalleryViews(gallery, map_options=MapOptions(max_points=20)).map()
    assert answer["projection"].startswith("as is") and answer["shown"] == 20
    np.testing.assert_allclose(answer["x"], e[answer["ids"], 0], atol=1e-6)
    np.testing.assert_allclose(answer["y"], e[answer["ids"], 1], atol=1e-6)


@pytest.mark.parametrize(
    ("organise", "map_options", "expected"),
    [
        ({"method": "spectral"}, None, "method='spectral' is not one of kmeans, hdbscan"),
        ({"threshold": 2}, None, "threshold=2 is not a cosine"),
        ({"k": 0}, None, "k=0"),
        ({"kk": 3}, None, "organise.kk is not an organise option"),
        ({"max_neighbours": 0}, None, "organise.max_neighbours=0 must be a whole number ≥ 1; e.g. organise.max_neigh"),
        (
            {"faiss_params": "deep"},
            None,
            "organise.faiss_params='deep' is not faiss search parameters; give name=value",
        ),
        ({"faiss_params": "deep"}, None, "\"organise.faiss_params='efSearch=128,nprobe=4'\", or organise.faiss_params"),
        ({"uniqueness_k": 0}, None, "organise.uniqueness_k=0 must be a whole number ≥ 1"),
        ({"method": "hdbscan", "min_cluster_size": 1}, None, "organise.min_cluster_size=1 must be a whole number ≥ 2"),
        (None, {"projection": "umap"}, "map.projection='umap' is not one of tsne, pca"),
        (None, {"max_points": 0}, "map.max_points=0 must be a whole number ≥ 1"),
        (None, {"max_iter": 2.5}, "map.max_iter=2.5 must be a whole number"),
        (None, {"points": 3}, "map.points is not a map option"),
    ],
)
def test_bad_view_options_are_one_line(organise, map_options, expected):
    with pytest.raises(UserError) as refused:
        organise_options(organise)
        MapOptions.from_config(map_options)
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_k_larger_than_the_gallery_is_refused_at_the_start(tmp_path):
    views = GalleryViews(clustered_gallery(tmp_path, n=8), {"k": 9})
    with pytest.raises(UserError, match="organise.k=9 clusters is more than the 8 items"):
        views.check_size()


def test_the_service_searches_duplicates_as_the_command_does_beyond_exact_limit(tmp_path):
    """The serve config's organise block has the command's search options and defaults (faiss_params null: efSearch
    64 for HNSW), so beyond exact_limit the page's groups are the command's."""
    from simlearn.config import config_dir
    from simlearn.organise.duplicates import search_parameters

    served = OmegaConf.load(config_dir() / "serve.yaml").organise
    command = OmegaConf.load(config_dir() / "organise.yaml")
    for key in ("threshold", "max_neighbours", "exact_limit", "faiss_index", "faiss_params", "uniqueness_k"):
        assert served[key] == command[key], key
    assert search_parameters(served.faiss_params, served.faiss_index) == "efSearch=64"
    gallery = clustered_gallery(tmp_path, n=300)
    options = {**OmegaConf.to_container(served), "k": 4, "exact_limit": 10}
    found = GalleryViews(gallery, options).organised()
    reference = organise_gallery(gallery, OmegaConf.merge(command, {"k": 4, "exact_limit": 10}))
    assert (
        found.duplicates.method
        == reference.duplicates.method
        == ("faiss HNSW32 index (approximate), candidates re-scored")
    )
    np.testing.assert_array_equal(found.duplicates.pairs, reference.duplicates.pairs)
    assert [299, 3] not in found.duplicates.pairs.tolist() and [3, 299] in found.duplicates.pairs.tolist()
