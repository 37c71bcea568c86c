"""Post-processing steps (simlearn/retrieval/postprocess.py) against brute-force float64 implementations written here
with full N x N matrices, leave-one-out and query/gallery, on data with exact duplicates (ties)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simlearn.errors import UserError
from simlearn.evaluation import RetrievalEvaluator, retrieval_metrics
from simlearn.retrieval import (
    AlphaQueryExpansion,
    DatabaseAugmentation,
    KReciprocalReranking,
    apply_postprocess,
    postprocess_names,
    postprocessors,
    search_ranking,
)
from tests.helpers import run_main, run_training
from tests.test_errors import assert_clean_failure

# ---------------------------------------------------------------- brute force, float64, every pair


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # einsum without BLAS: identical rows give identical values, so exact duplicates tie exactly
    return np.einsum("id,jd->ij", _unit(a), _unit(b), optimize=False)


def _ranked(key: np.ndarray, self_search: bool, descending: bool = True) -> np.ndarray:
    """Each row's columns by the key (ties: the lower column first), the row's own column left out in self-search."""
    rows = []
    for i, row in enumerate(key):
        order = np.lexsort((np.arange(len(row)), -row if descending else row))
        rows.append(order[order != i] if self_search else order)
    return np.array(rows)


def _expanded(x: np.ndarray, base: np.ndarray, cos: np.ndarray, ranks: np.ndarray, n: int, alpha: float):
    out = []
    for i in range(len(x)):
        nn = ranks[i, :n]
        w = np.clip(cos[i, nn], 0, None) ** alpha
        out.append(_unit(x[i : i + 1])[0] + (w[:, None] * _unit(base[nn])).sum(axis=0))
    return _unit(np.array(out))


def brute_aqe(q, g, self_search, n, alpha):
    cos = _cos(q, g)
    expanded = _expanded(q, g, cos, _ranked(cos, self_search), n, alpha)
    return _ranked(_cos(expanded, g), self_search)


def brute_dba(q, g, self_search, n, alpha):
    gg = _cos(g, g)
    augmented = _expanded(g, g, gg, _ranked(gg, True), n, alpha)
    return _ranked(_cos(q, augmented), self_search)


def brute_k_reciprocal(q, g, self_search, k1, k2, lam, top_l=None):
    """The reference code of Zhong et al. (loops, dense V), with simlearn's conventions: an item first in its own
    ranking, ties to the lower index, d = (1 - cos) / 2."""
    x = g if self_search else np.concatenate([q, g])
    offset = 0 if self_search else len(q)
    n = len(x)
    c = _cos(x, x)
    dist = (1 - c) / 2
    rank = np.array([np.concatenate([[i], r]) for i, r in enumerate(_ranked(c, True))])
    v = np.zeros((n, n))
    half = int(round(k1 / 2))
    for i in range(n):
        forward = rank[i, : k1 + 1]
        backward = rank[forward, : k1 + 1]
        kr = forward[np.where(backward == i)[0]]
        expansion = kr
        for j in kr:
            cf = rank[j, : half + 1]
            cb = rank[cf, : half + 1]
            ckr = cf[np.where(cb == j)[0]]
            if len(np.intersect1d(ckr, kr)) > 2 / 3 * len(ckr):
                expansion = np.append(expansion, ckr)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / w.sum()
    if k2 != 1:
        v = np.array([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    nq = len(q)
    final = np.empty((nq, len(g)))
    for a in range(nq):
        for b in range(len(g)):
            m = np.minimum(v[a], v[b + offset]).sum()
            final[a, b] = (1 - lam) * (1 - m / (2 - m)) + lam * dist[a, b + offset]
    plain = _ranked(_cos(q, g), self_search)
    if top_l is None or top_l >= plain.shape[1]:
        return _ranked(final, self_search, descending=False)
    out = plain.copy()
    for a in range(nq):
        top = plain[a, :top_l]
        out[a, :top_l] = top[np.lexsort((top, final[a, top]))]
    return out


# ---------------------------------------------------------------- data


def _data(n: int, d: int, seed: int) -> np.ndarray:
    """Gaussian rows, a few of them exact duplicates and a few twice another row (the same direction, exactly):
    ties that every float64 formula sees as ties."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    x[n - 6 : n - 3] = x[[1, 4, 4]]
    x[n - 3 :] = 2 * x[[0, 2, 7]]
    return x


CASES = {"leave-one-out": (40, None), "query-gallery": (12, 30)}


def _case(name: str):
    nq, ng = CASES[name]
    if ng is None:
        x = _data(nq, 5, 1)
        return x, None, x, True
    g = _data(ng, 5, 2)
    q = np.concatenate([_data(nq - 2, 5, 3), g[[3, 29]]])  # two queries equal to gallery items
    return q, g, g, False


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("n", "alpha"), [(3, 3.0), (1, 0.5)])
def test_aqe_equals_brute_force(case, n, alpha):
    q, g, gallery, self_search = _case(case)
    ranking = search_ranking(q, g, depth=len(gallery))
    got = AlphaQueryExpansion(n=n, alpha=alpha).process(ranking)
    np.testing.assert_array_equal(got.indices, brute_aqe(q, gallery, self_search, n, alpha))
    cos = _cos(got.queries, gallery)
    np.testing.assert_allclose(got.similarities, np.take_along_axis(cos, got.indices, axis=1), atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("n", "alpha"), [(3, 3.0), (2, 1.0)])
def test_dba_equals_brute_force(case, n, alpha):
    q, g, gallery, self_search = _case(case)
    got = DatabaseAugmentation(n=n, alpha=alpha).process(search_ranking(q, g, depth=len(gallery)))
    np.testing.assert_array_equal(got.indices, brute_dba(q, gallery, self_search, n, alpha))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("k1", "k2", "lam"), [(20, 6, 0.3), (6, 3, 0.0), (4, 1, 0.5)])
def test_k_reciprocal_equals_brute_force_when_l_covers_the_gallery(case, k1, k2, lam):
    q, g, gallery, self_search = _case(case)
    ranking = search_ranking(q, g, depth=len(gallery))
    got = KReciprocalReranking(k1=k1, k2=k2, lambda_value=lam, top_l=len(gallery)).process(ranking)
    want = brute_k_reciprocal(q, gallery, self_search, k1, k2, lam)
    np.testing.assert_array_equal(got.indices, want)
    assert not np.array_equal(got.indices, ranking.indices)  # the re-ranking changed something


@pytest.mark.parametrize("case", list(CASES))
def test_k_reciprocal_re_ranks_the_top_l_and_keeps_the_rest(case):
    q, g, gallery, self_search = _case(case)
    ranking = search_ranking(q, g, depth=len(gallery))
    got = KReciprocalReranking(k1=6, k2=3, top_l=8).process(ranking)
    np.testing.assert_array_equal(got.indices, brute_k_reciprocal(q, gallery, self_search, 6, 3, 0.3, top_l=8))
    np.testing.assert_array_equal(got.indices[:, 8:], ranking.indices[:, 8:])


def test_changed_queries_in_self_search_never_find_their_own_item():
    """Leave-one-out after a step changed the queries: query i is still gallery item i and never its neighbour,
    also where item i is not among its best (searched one place deeper, the own item dropped, else the last)."""
    from simlearn.retrieval import Ranking

    g = _data(30, 5, 4)
    moved = _data(30, 5, 5)  # each query far from its own item
    plain = search_ranking(g, depth=4)
    ranking = Ranking(moved, g, True, plain.indices, plain.similarities)
    got = AlphaQueryExpansion(n=0).process(ranking)
    np.testing.assert_array_equal(got.indices, _ranked(_cos(moved, g), True)[:, :4])


def test_k_reciprocal_is_chunked_the_same(monkeypatch):
    """Blocks of pairs and of items (bounded memory) give the result of one block."""
    import simlearn.retrieval.postprocess as postprocess

    q, g, gallery, _ = _case("query-gallery")
    ranking = search_ranking(q, g, depth=len(gallery))
    whole = KReciprocalReranking(k1=6, k2=3, top_l=20).process(ranking)
    monkeypatch.setattr(postprocess, "_PAIR_BLOCK", 7)
    monkeypatch.setattr(postprocess, "_ITEM_BLOCK", 5)
    blocks = KReciprocalReranking(k1=6, k2=3, top_l=20).process(ranking)
    np.testing.assert_array_equal(blocks.indices, whole.indices)


def test_a_chain_applies_the_steps_in_order():
    q, g, gallery, _ = _case("query-gallery")
    ranking = search_ranking(q, g, depth=len(gallery))
    steps = postprocessors(["dba", "aqe"])
    chained = apply_postprocess(ranking, steps)
    np.testing.assert_array_equal(chained.indices, steps[1].process(steps[0].process(ranking)).indices)
    assert not np.array_equal(chained.indices, steps[0].process(ranking).indices)


def test_step_names_come_from_the_yaml_files_and_an_unknown_one_is_one_line():
    assert postprocess_names() == ["aqe", "dba", "k_reciprocal"]
    steps = postprocessors(["aqe", "dba", "k_reciprocal"], backend="torch")
    assert [type(s) for s in steps] == [AlphaQueryExpansion, DatabaseAugmentation, KReciprocalReranking]
    assert steps[2].k1 == 20 and steps[2].k2 == 6 and steps[2].lambda_value == 0.3 and steps[0].backend == "torch"
    with pytest.raises(UserError, match=r"^postprocess step 'qe' does not exist; valid: \['aqe', 'dba', 'k_recip"):
        postprocessors(["qe"])
    with pytest.raises(UserError, match="k1 must be an integer"):
        KReciprocalReranking(k1=0)


def test_a_step_with_other_parameters_is_an_entry_with_its_target():
    from hydra.utils import instantiate

    from simlearn.config import compose_config

    entry = "{_target_:simlearn.retrieval.KReciprocalReranking,k1:10}"
    evaluator = instantiate(compose_config([f"evaluation.postprocess=[aqe,{entry}]"]).evaluation)
    assert [type(s) for s in evaluator.postprocess] == [AlphaQueryExpansion, KReciprocalReranking]
    assert evaluator.postprocess[1].k1 == 10 and evaluator.postprocess[1].k2 == 6


def test_evaluator_reports_plain_and_post_processed_metrics_by_the_same_metric_code():
    q, g, gallery, _ = _case("leave-one-out")
    labels = np.arange(len(q)) % 4
    import torch

    evaluator = RetrievalEvaluator("label", ks=(1, 5), knn_k=3, clustering=None, postprocess=["aqe", "k_reciprocal"])
    fields = {"label": torch.from_numpy(labels)}
    metrics = evaluator(torch.from_numpy(q).float(), fields, "test")
    assert metrics["recall@1"] == retrieval_metrics(q.astype(np.float32), labels, (1, 5), knn_k=3)["recall@1"]
    # the post-processed metrics: those of the brute-force chain's ranking, computed here by hand
    steps = postprocessors(["aqe", "k_reciprocal"])
    ranked = apply_postprocess(search_ranking(q.astype(np.float32), depth=len(q)), steps).indices
    hits = labels[ranked] == labels[:, None]
    r = hits.sum(axis=1)
    ap = [(np.cumsum(h[:k]) / np.arange(1, k + 1) * h[:k]).sum() / k for h, k in zip(hits, r, strict=True)]
    assert metrics["aqe+k_reciprocal/recall@1"] == pytest.approx(hits[:, 0].mean())
    assert metrics["aqe+k_reciprocal/recall@5"] == pytest.approx(hits[:, :5].any(axis=1).mean())
    assert metrics["aqe+k_reciprocal/map@r"] == pytest.approx(np.mean(ap))
    assert "aqe+k_reciprocal/knn_accuracy@3" in metrics
    assert metrics["aqe+k_reciprocal/map@r"] != metrics["map@r"]
    # validation skips the post-processing
    assert not any("/" in key for key in evaluator(torch.from_numpy(q).float(), fields, "val"))


@pytest.mark.slow
def test_training_with_aqe_reports_both_metric_sets(tmp_path):
    metrics = run_training(tmp_path, "data=digits", "trainer.max_epochs=1", "evaluation.postprocess=[aqe]")
    written = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("recall@1", "map@r", "recall@10"):
        assert f"test/{key}" in written and f"test/aqe/{key}" in written
        assert written[f"test/aqe/{key}"] == pytest.approx(metrics[f"test/aqe/{key}"])
    assert not any(key.startswith("val/aqe/") for key in written)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("evaluation.postprocess=[aqe,qe]", ["postprocess step 'qe' does not exist", "['aqe', 'dba', 'k_reciprocal']"]),
        ("evaluation.postprocess=3", ["evaluation.postprocess must be a string or a list or null, got 3"]),
    ],
)
def test_a_wrong_postprocess_is_one_line_before_training(tmp_path, capfd, override, fragments):
    result = run_main("simlearn.cli.train", override, f"hydra.run.dir={tmp_path}", "logger=none", capfd=capfd)
    assert_clean_failure(result, "error:", *fragments)
    assert result.returncode == 2
    assert not (tmp_path / "checkpoints").exists()


def test_evaluator_post_processes_queries_against_the_gallery():
    import torch

    q, g, _, _ = _case("query-gallery")
    labels_q, labels_g = np.arange(len(q)) % 3, np.arange(len(g)) % 3
    x = torch.from_numpy(np.concatenate([q, g])).float()
    fields = {
        "label": torch.from_numpy(np.concatenate([labels_q, labels_g])),
        "is_gallery": torch.tensor([0] * len(q) + [1] * len(g)),
    }
    metrics = RetrievalEvaluator("label", ks=(1,), knn_k=None, clustering=None, postprocess="dba")(x, fields)
    ranked = DatabaseAugmentation().process(search_ranking(x[: len(q)].numpy(), x[len(q) :].numpy(), len(g))).indices
    hits = labels_g[ranked] == labels_q[:, None]
    assert metrics["dba/recall@1"] == pytest.approx(hits[:, 0].mean())
    assert metrics["num_gallery"] == len(g) and "dba/num_gallery" not in metrics


def test_dba_augments_a_gallery_once_for_many_searches(monkeypatch):
    """A service searches one gallery many times: DBA's augmented gallery is computed at the first search only, the
    later ones equal a fresh step's, and another gallery array is augmented anew."""
    from simlearn.retrieval import postprocess

    rng = np.random.default_rng(3)
    gallery, other = rng.normal(size=(60, 8)), rng.normal(size=(60, 8))
    step, calls = DatabaseAugmentation(n=3, alpha=1.0), []
    real = postprocess._search
    monkeypatch.setattr(postprocess, "_search", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    answers = [postprocess.postprocessed_top_k(rng.normal(size=(2, 8)), gallery, 5, [step]) for _ in range(3)]
    assert calls.count(True) == 1  # the gallery's own neighbours: searched once for three searches
    assert len(answers) == 3
    again = rng.normal(size=(4, 8))
    np.testing.assert_array_equal(
        postprocess.postprocessed_top_k(again, gallery, 5, [step])[1],
        postprocess.postprocessed_top_k(again, gallery, 5, [DatabaseAugmentation(n=3, alpha=1.0)])[1],
    )
    calls.clear()
    postprocess.postprocessed_top_k(again, other, 5, [step])
    assert calls.count(True) == 1  # a new gallery: augmented again
