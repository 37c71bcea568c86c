"""simlearn.organise: clusters, near-duplicate groups and uniqueness on small generated embeddings, checked against
brute force (float64, all pairs) where the library must avoid it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from simlearn.errors import UserError
from simlearn.organise import cluster_embeddings, find_duplicates, leaks, uniqueness
from simlearn.organise.clusters import NOISE
from simlearn.organise.duplicates import neighbour_index


def _clustered(n: int = 240, d: int = 16, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 6
    labels = rng.integers(0, classes, n)
    return (centres[labels] + rng.normal(size=(n, d))).astype(np.float32), labels


def _unit(x: np.ndarray) -> np.ndarray:
    # the float32 unit rows the library searches, in float64: the brute force then differs only by summation order
    x = x.astype(np.float64)
    rows = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_duplicates_equal_brute_force_pairs_and_components():
    x, _ = _clustered()
    rng = np.random.default_rng(1)
    x[200:220] = x[:20] + 0.01 * rng.normal(size=(20, x.shape[1]))  # planted copies
    x[220] = x[0] + 0.01 * rng.normal(size=x.shape[1])  # a third copy of item 0: a group of three
    threshold = 0.995
    found = find_duplicates(x, threshold, chunk_size=7)  # many chunks
    u = _unit(x)
    sims = u @ u.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    assert {tuple(p) for p in found.pairs.tolist()} == set(zip(a.tolist(), b.tolist(), strict=True))
    np.testing.assert_allclose(found.pair_cosines, sims[found.pairs[:, 0], found.pairs[:, 1]], atol=1e-9)
    _, component = connected_components(np.triu(sims >= threshold, 1), directed=False)
    expected = sorted(sorted(np.flatnonzero(component == c).tolist()) for c in np.unique(component)
                      if (component == c).sum() >= 2)  # fmt: skip
    assert sorted(g.tolist() for g in found.groups) == expected
    assert found.groups[0].tolist() == [0, 200, 220] and found.exact
    assert found.group_of(len(x))[220] == 0


def test_duplicates_beyond_the_exact_limit_go_through_an_index_and_say_so():
    x, _ = _clustered()
    x[200:210] = x[:10] * 1.0001
    exact = find_duplicates(x, 0.999)
    ann = find_duplicates(x, 0.999, exact_limit=100, index_factory="Flat")
    assert "faiss Flat" in ann.method and "exact (" in exact.method
    assert ann.pairs.tolist() == exact.pairs.tolist()


@pytest.mark.parametrize("threshold", [1.5, -1.01, "high", True])
def test_a_threshold_outside_minus_one_to_one_is_one_line(threshold):
    with pytest.raises(UserError, match="from -1 to 1"):
        find_duplicates(np.eye(3, dtype=np.float32), threshold)


def test_kmeans_finds_the_classes_and_reports_centre_cosines():
    x, labels = _clustered()
    clusters = cluster_embeddings(x, k=4, labels=labels)
    assert clusters.metrics["nmi"] > 0.9 and clusters.metrics["ami"] > 0.9
    u = _unit(x)
    for c in range(4):
        members = clusters.cluster == c
        centre = u[members].mean(axis=0)
        np.testing.assert_allclose(clusters.cosine[members], u[members] @ (centre / np.linalg.norm(centre)), atol=1e-5)
    sizes = [row["size"] for row in clusters.summary([str(v) for v in labels])]
    assert sizes == sorted(sizes, reverse=True) and sum(sizes) == len(x)


def test_the_centres_and_cosines_computed_in_blocks_of_rows_are_the_same(monkeypatch):
    x, labels = _clustered()
    whole = cluster_embeddings(x, k=4)
    monkeypatch.setattr("simlearn.organise.clusters._BLOCK_ROWS", 7)  # 35 blocks, the last one short
    blocks = cluster_embeddings(x, k=4)
    np.testing.assert_array_equal(blocks.cluster, whole.cluster)
    np.testing.assert_array_equal(blocks.centres, whole.centres)
    np.testing.assert_array_equal(blocks.cosine, whole.cosine)


def test_hdbscan_needs_no_k_and_leaves_noise_unassigned():
    x, labels = _clustered()
    far = np.random.default_rng(2).normal(size=(5, x.shape[1])).astype(np.float32) * 0.01  # near the origin: scattered
    far += np.random.default_rng(3).normal(size=(5, x.shape[1])).astype(np.float32)
    clusters = cluster_embeddings(np.vstack([x, far]), method="hdbscan", min_cluster_size=10)
    assert len(clusters.centres) >= 2
    assert np.isnan(clusters.cosine[clusters.cluster == NOISE]).all()


def test_hdbscan_above_its_limit_is_one_line_naming_the_way_out():
    x, _ = _clustered(n=60)
    with pytest.raises(UserError, match="method=hdbscan on 60 items: it takes at most 50 .*; use method=kmeans"):
        cluster_embeddings(x, method="hdbscan", hdbscan_limit=50)
    assert len(cluster_embeddings(x, method="hdbscan", hdbscan_limit=60).cluster) == 60


@pytest.mark.parametrize(("k", "match"), [(241, "k must be an integer from 1 to 240"), (0, "from 1 to 240")])
def test_k_larger_than_the_items_is_one_line(k, match):
    with pytest.raises(UserError, match=match):
        cluster_embeddings(_clustered()[0], k=k)


def test_an_empty_gallery_is_one_line():
    with pytest.raises(UserError, match="empty"):
        find_duplicates(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(UserError, match="empty"):
        cluster_embeddings(np.zeros((0, 4), dtype=np.float32), k=1)


def test_uniqueness_is_one_minus_the_mean_cosine_to_the_nearest_others():
    x, _ = _clustered()
    x[0] = -x[1:].mean(axis=0)  # opposite every cluster: the most unusual
    found = uniqueness(x, k=3, chunk_size=11)
    u = _unit(x)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    expected = 1 - np.sort(sims, axis=1)[:, -3:].mean(axis=1)
    np.testing.assert_allclose(found.score, expected, atol=1e-9)
    assert found.order[0] == 0 and np.all(np.diff(found.score[found.order]) <= 0)


def test_leaks_are_the_held_out_items_with_a_near_copy_in_train_as_brute_force_finds():
    x, _ = _clustered(n=120)
    rng = np.random.default_rng(4)
    splits = np.array(["train"] * 80 + ["val"] * 20 + ["test"] * 20)
    x[100:104] = x[[3, 10, 11, 50]] + 0.001 * rng.normal(size=(4, x.shape[1]))  # test items copied from train
    x[85] = x[7] * 1.01  # a val item copied from train
    x[110] = x[115] + 0.0001  # a copy within test: not a leak from train
    paths = [f"img/{i}.png" for i in range(len(x))]
    threshold = 0.999
    found = leaks(x, paths, splits, threshold, chunk_size=5)
    u = _unit(x)
    sims = u[80:] @ u[:80].T
    expected = {(80 + int(q), int(np.argmax(sims[q]))) for q in np.flatnonzero(sims.max(axis=1) >= threshold)}
    assert {(leak.item, leak.train_item) for leak in found.leaks} == expected
    assert {(100, 3), (101, 10), (102, 11), (103, 50), (85, 7)} <= expected
    assert found.counts == {"val": 1, "test": 4} and found.checked == {"val": 20, "test": 20}
    leak = next(leak for leak in found.leaks if leak.item == 85)
    assert (leak.split, leak.path, leak.train_path) == ("val", "img/85.png", "img/7.png")
    np.testing.assert_allclose(leak.cosine, sims[5, 7], atol=1e-9)


def test_leaks_without_a_training_split_is_one_line():
    with pytest.raises(UserError, match="no 'train' split"):
        leaks(np.eye(3, dtype=np.float32), ["a", "b", "c"], ["val", "test", "test"])


def test_uniqueness_beyond_the_exact_limit_goes_through_the_index_shared_with_the_duplicates():
    x, _ = _clustered()
    x[200:210] = x[:10] * 1.0001
    exact = uniqueness(x, k=3)
    flat = uniqueness(x, k=3, exact_limit=100, index_factory="Flat")  # an exhaustive index: the same result
    np.testing.assert_allclose(flat.score, exact.score, atol=1e-9)
    assert flat.exact and exact.exact
    index = neighbour_index(x, exact_limit=100, index_factory="HNSW32")
    assert neighbour_index(x, exact_limit=len(x)) is None  # up to the limit: the exact search
    approximate = uniqueness(x, k=3, index=index)
    assert not approximate.exact
    duplicates = find_duplicates(x, 0.999, index=index)
    assert "faiss HNSW32 index (approximate)" in duplicates.method and not duplicates.exact
    assert duplicates.pairs.tolist() == find_duplicates(x, 0.999).pairs.tolist()
    # what the index finds is re-scored exactly: an item can only look more unusual (a closer neighbour missed)
    assert np.all(approximate.score >= exact.score - 1e-9)


@pytest.mark.parametrize("search", ["duplicates", "uniqueness"])
def test_the_neighbour_searches_never_hold_all_items_neighbours_at_once(search):
    # 5,000 items x 64 neighbours: one (N, 64) float64 array alone is 2.4 MiB (holding every item's neighbours takes
    # three such arrays); chunks of 100 queries and the checks of the (N, 4) input take well under one
    n, neighbours = 5000, 64
    x = np.random.default_rng(5).normal(size=(n, 4)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tracemalloc.start()
    try:
        if search == "duplicates":
            find_duplicates(x, 0.9999, max_neighbours=neighbours, chunk_size=100)
        else:
            uniqueness(x, k=neighbours, chunk_size=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * neighbours * 8, f"peak {peak / 2**20:.2f} MiB"


@pytest.mark.parametrize("max_neighbours, uniqueness_k", [(3, 7), (8, 2)])
def test_the_command_searches_once_for_duplicates_and_uniqueness_and_gets_what_each_finds_alone(
    monkeypatch, max_neighbours, uniqueness_k
):
    from omegaconf import OmegaConf

    import simlearn.organise.command as command
    from simlearn.retrieval.gallery import Gallery

    x, labels = _clustered(n=120, d=8)
    x[60] = x[3] + 1e-4  # a planted copy, so that there is a pair
    searches = []
    scan = command.self_neighbours
    monkeypatch.setattr(command, "self_neighbours", lambda *a, **kw: searches.append(a[1]) or scan(*a, **kw))
    gallery = Gallery(x, [str(v) for v in labels], None, "planted", None)
    cfg = OmegaConf.create({"k": 4, "threshold": 0.95, "max_neighbours": max_neighbours, "uniqueness_k": uniqueness_k})
    found = command.organise_gallery(gallery, cfg)
    assert searches == [max(max_neighbours, uniqueness_k)]
    alone = find_duplicates(x, threshold=0.95, max_neighbours=max_neighbours)
    assert np.array_equal(found.duplicates.pairs, alone.pairs) and len(alone.pairs) >= 1
    assert [g.tolist() for g in found.duplicates.groups] == [g.tolist() for g in alone.groups]
    scores = uniqueness(x, k=uniqueness_k)
    assert np.array_equal(found.uniqueness.score, scores.score) and np.array_equal(found.uniqueness.order, scores.order)


def test_faiss_params_set_the_index_search_depth_and_a_wrong_one_is_one_line():
    import faiss

    x, _ = _clustered(n=300, d=8)
    index = neighbour_index(x, exact_limit=100, index_factory="HNSW32", params="efSearch=77")
    assert faiss.downcast_index(index.index).hnsw.efSearch == 77
    assert faiss.downcast_index(neighbour_index(x, 100, "HNSW32").index).hnsw.efSearch != 77
    with pytest.raises(UserError, match=r"faiss_params='nprobe=4' does not fit the faiss HNSW32 index") as error:
        neighbour_index(x, exact_limit=100, index_factory="HNSW32", params="nprobe=4")
    assert "\n" not in str(error.value)


def test_the_default_faiss_params_fit_any_index_and_an_untrainable_index_is_one_line():
    import faiss
    from omegaconf import OmegaConf

    from simlearn.organise.command import organise_gallery
    from simlearn.retrieval.gallery import Gallery

    x, labels = _clustered(n=300, d=8)
    # null (the config's default): efSearch=64 for HNSW, faiss's own defaults for an IVF index (no efSearch to set)
    assert faiss.downcast_index(neighbour_index(x, 100, "HNSW32").index).hnsw.efSearch == 64
    ivf = neighbour_index(x, 100, "IVF4,Flat")
    assert ivf is not None and faiss.extract_index_ivf(ivf.index).nprobe == 1
    cfg = OmegaConf.create({"k": 3, "threshold": 0.99, "exact_limit": 0, "faiss_index": "IVF4,Flat"})
    found = organise_gallery(Gallery(x, [str(v) for v in labels], None, "ivf", None), cfg)
    assert found.duplicates.method.startswith("faiss IVF4,Flat index")
    given = neighbour_index(x, 100, "IVF4,Flat", {"nprobe": 3})  # a mapping, as {nprobe:3} on the command line
    assert faiss.extract_index_ivf(given.index).nprobe == 3
    for factory, n, fragment in (("IVF1024,Flat", 300, "clusters (1024)"), ("PQ4", 200, "clusters (256)")):
        with pytest.raises(UserError, match=f"faiss_index='{factory}' cannot be trained on these {n} items") as error:
            neighbour_index(x[:n], 100, factory)
        message = str(error.value)
        assert fragment in message and "HNSW32" in message and "\n" not in message
        assert "Clustering.cpp" not in message and "failed:" not in message  # faiss's C++ location left out


def test_every_pair_is_found_when_groups_exceed_max_neighbours():
    """A group larger than max_neighbours: its items' lists come back all pairs and are searched again deeper, so the
    exact search finds every pair at cos ≥ threshold (against a brute-force float64 count), the ANN one too here."""
    rng = np.random.default_rng(5)
    x, _ = _clustered(n=400, d=8)
    for source, size in ((3, 40), (50, 9), (90, 3)):  # groups of 41, 10 and 4 near-copies
        rows = slice(100 + source, 100 + source + size)
        x[rows] = x[source] + 1e-4 * rng.normal(size=(size, x.shape[1]))
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    cos = unit @ unit.T
    truth = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.triu(cos >= 0.999, 1)), strict=True)}
    assert len(truth) >= 41 * 40 // 2 + 45 + 6  # the planted pairs at least
    for max_neighbours in (1, 3, 32):
        found = find_duplicates(x, threshold=0.999, max_neighbours=max_neighbours, chunk_size=64)
        assert {tuple(p) for p in found.pairs.tolist()} == truth, max_neighbours
        assert found.deepened >= (44 if max_neighbours < 4 else 41)  # the group members whose lists were all pairs
    through_index = find_duplicates(x, threshold=0.999, max_neighbours=3, exact_limit=100)
    assert not through_index.exact and {tuple(p) for p in through_index.pairs.tolist()} == truth
    assert found.capped == 0


def test_a_group_larger_than_the_deepening_limit_lists_each_items_nearest_pairs_and_stays_whole(monkeypatch, caplog):
    """Past DEEPEN_LIMIT near-copies (a catalogue full of one blank image) an item keeps that many pairs, not all:
    memory N x DEEPEN_LIMIT pairs, not N² / 2; the group is whole all the same, and a warning says so."""
    import simlearn.organise.duplicates as duplicates

    monkeypatch.setattr(duplicates, "DEEPEN_LIMIT", 8)
    rng = np.random.default_rng(6)
    x, _ = _clustered(n=200, d=8)
    x[100:140] = x[3] + 1e-4 * rng.normal(size=(40, x.shape[1]))  # a group of 41
    with caplog.at_level("WARNING", logger="simlearn.organise.duplicates"):
        found = find_duplicates(x, threshold=0.999, max_neighbours=2)
    group = sorted([3, *range(100, 140)])
    assert [g.tolist() for g in found.groups] == [group]
    assert found.capped == 41 and found.deepened == 41
    per_item = np.bincount(found.pairs.ravel(), minlength=200)[group]
    assert per_item.min() >= 8 and len(found.pairs) < 41 * 40 // 2  # each its 8 nearest at least, not all 820
    assert "41 item(s) have more than 8 near-copies each" in caplog.text and "groups are whole" in caplog.text
    caplog.clear()
    x[108:140] = rng.normal(size=(32, x.shape[1]))  # the group is now 3 and 100..107: nine, each with exactly 8 copies
    with caplog.at_level("WARNING", logger="simlearn.organise.duplicates"):
        exact = find_duplicates(x, threshold=0.999, max_neighbours=2)
    assert [g.tolist() for g in exact.groups] == [[3, *range(100, 108)]] and len(exact.pairs) == 36  # every pair
    assert exact.capped == 0 and exact.deepened == 9 and "near-copies each" not in caplog.text


def test_k_from_a_range_is_the_k_of_the_highest_silhouette_and_says_so():
    from sklearn.metrics import silhouette_score

    from simlearn.organise.clusters import choose_k

    x, labels = _clustered(n=240, d=16, classes=5, seed=3)
    found = choose_k(x, range(2, 9), labels=labels)
    scores = {int(k): v for k, v in found.selection["silhouette"].items()}
    assert sorted(scores) == list(range(2, 9)) and "silhouette" in found.selection["criterion"]
    assert len(found.centres) == max(scores, key=lambda k: (scores[k], -k)) == 5  # the five classes
    # each score is scikit-learn's silhouette of that k's clustering (all 240 items: below the sample size)
    again = cluster_embeddings(x, k=3)
    assert scores[3] == pytest.approx(silhouette_score(_unit(x), again.cluster, metric="cosine"), abs=1e-6)
    assert found.metrics["ami"] > 0.95


@pytest.mark.parametrize(
    "spec, match",
    [
        ([1, 5], "2 <= low <= high"),
        ([6, 3], "2 <= low <= high"),
        ([2, 6, 0], "2 <= low <= high"),
        ([2.5, 6], "2 <= low <= high"),
        ("abc", "give a whole number of clusters"),
        (0, "at least 1"),
        ([2, 40], "the gallery has 30"),
    ],
)
def test_a_bad_k_or_k_range_is_one_line(spec, match):
    from simlearn.organise.clusters import k_candidates

    with pytest.raises(UserError, match=match) as error:
        k_candidates(spec, 30)
    assert "\n" not in str(error.value)


def test_the_command_takes_a_k_range_from_the_command_line_and_writes_its_choice(tmp_path):
    from omegaconf import OmegaConf

    from simlearn.organise.clusters import k_candidates
    from simlearn.organise.command import check_options, organise_gallery, write_outputs
    from simlearn.retrieval.gallery import Gallery

    x, labels = _clustered(n=120, d=8, classes=3, seed=1)
    cfg = OmegaConf.merge(OmegaConf.create({"k": 10, "threshold": 0.999}), OmegaConf.from_dotlist(["k=[2,6,2]"]))
    check_options(cfg)
    assert k_candidates(list(cfg.k)) == [2, 4, 6]
    found = organise_gallery(Gallery(x, [str(v) for v in labels], None, "clustered", None), cfg)
    summary = write_outputs(found, tmp_path, OmegaConf.merge(cfg, {"sheets": False}))
    assert sorted(summary["clusters"]["k_choice"]["silhouette"]) == ["2", "4", "6"]
    assert summary["clusters"]["k"] in (2, 4, 6)
