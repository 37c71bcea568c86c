"""The plots report: embedding scatter and retrieval grid PNGs, logged to wandb when a WandbLogger is present."""

import re
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger

from simlearn.build import build_datamodule
from simlearn.config import compose_config
from simlearn.inference import search
from simlearn.models import EmbeddingSet
from simlearn.reports import PlotsReport
from simlearn.reports.plots import distinct_queries, save_embedding_scatter, similarity_captions
from simlearn.retrieval.vectors import angle_deg

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def digits():
    return build_datamodule(compose_config(["logger=none"]).data)


def fake_results(datamodule, dim: int) -> SimpleNamespace:
    """Test-split embeddings that separate the classes (noisy one-hot directions), as the model would return."""
    test = datamodule.datasets["test"]
    labels = test.labels("digit").numpy()
    rng = np.random.default_rng(0)
    embeddings = np.eye(max(dim, 10))[labels][:, :dim] + 0.6 * rng.normal(size=(len(labels), dim))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings = embeddings.astype(np.float32)
    # a copy: a test that edits the index must not edit the module-scoped datamodule's split
    result = EmbeddingSet(embeddings=embeddings, fields={"digit": labels}, index=test.indices.numpy().copy())
    return SimpleNamespace(results={"test": result}, config={"preprocessing": datamodule.preprocessing()})


@pytest.mark.parametrize("dim", [2, 16])
def test_plots_report_writes_scatter_and_grid(digits, tmp_path, dim):
    model = fake_results(digits, dim)
    metrics = PlotsReport(max_points=200)(
        trainer=SimpleNamespace(loggers=[]), model=model, datamodule=digits, output_dir=tmp_path
    )
    assert metrics == {}
    for name in ("embedding_scatter.png", "retrieval_grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "similarity.png").exists()  # only drawn here for wandb


def test_scatter_uses_tsne_above_two_dimensions_on_a_subsample(tmp_path):
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(300, 8)), rng.integers(0, 3, size=300)
    assert save_embedding_scatter(tmp_path / "a.png", x, labels, ["a", "b", "c"], max_points=100) == "tsne"
    assert save_embedding_scatter(tmp_path / "b.png", x[:, :2], labels, ["a", "b", "c"]) == "2d"


def test_figures_and_similarity_heatmap_are_logged_to_wandb(digits, tmp_path):
    logger = mock.create_autospec(WandbLogger, instance=True)
    PlotsReport(max_points=100)(
        trainer=SimpleNamespace(loggers=[logger]), model=fake_results(digits, 8), datamodule=digits, output_dir=tmp_path
    )
    logged = {call.kwargs["key"]: call.kwargs["images"] for call in logger.log_image.call_args_list}
    assert sorted(logged) == ["plots/embedding_scatter", "plots/retrieval_grid", "plots/similarity"]
    assert logged["plots/similarity"] == [str(tmp_path / "similarity.png")]
    assert (tmp_path / "similarity.png").read_bytes()[:8] == PNG


def test_a_figure_that_fails_is_skipped_not_fatal(digits, tmp_path, caplog):
    model = fake_results(digits, 8)
    model.results["test"].index[:] = -1  # images cannot be found: tiles are drawn empty, nothing fails
    with mock.patch("simlearn.reports.plots.save_embedding_scatter", side_effect=RuntimeError("boom")):
        PlotsReport()(trainer=SimpleNamespace(loggers=[]), model=model, datamodule=digits, output_dir=tmp_path)
    assert "could not draw the embedding scatter (RuntimeError: boom)" in caplog.text
    assert (tmp_path / "retrieval_grid.png").exists() and not (tmp_path / "embedding_scatter.png").exists()


def drawn_grid(model, datamodule, tmp_path, **kwargs) -> list[list[int]]:
    """The items of each row of the retrieval grid that PlotsReport draws (the query first), as dataset indices."""
    requested = []

    def images(index):
        requested.append(int(index))

    with (
        mock.patch("simlearn.reports.plots.SplitImages", return_value=images),
        mock.patch("simlearn.reports.plots.save_embedding_scatter"),
        mock.patch("simlearn.reports.plots.save_retrieval_grid") as save,
    ):
        PlotsReport(**kwargs)(
            trainer=SimpleNamespace(loggers=[]), model=model, datamodule=datamodule, output_dir=tmp_path
        )
    rows, start = [], 0
    for row in save.call_args.args[1]:
        rows.append(requested[start : start + len(row)])
        start += len(row)
    assert start == len(requested)
    return rows


def test_the_grid_searches_the_queries_against_the_gallery_as_the_metrics_do(digits, tmp_path):
    model = fake_results(digits, 16)
    result = model.results["test"]
    role = np.where(np.arange(len(result.index)) % 3 == 0, 0, 1)  # a query/gallery test: a third are queries
    result.fields["is_gallery"] = role
    role_of = dict(zip(result.index.tolist(), role.tolist(), strict=True))
    rows = drawn_grid(model, digits, tmp_path, k=5)
    assert len(rows) == 8 and all(len(row) == 6 for row in rows)
    for query, *results in rows:
        assert role_of[query] == 0
        assert [role_of[item] for item in results] == [1] * 5


def test_the_best_rows_show_distinct_queries_not_near_duplicates(digits, tmp_path):
    model = fake_results(digits, 16)
    result = model.results["test"]
    labels = result.fields["digit"]
    # two pairs of identical images, each other's nearest neighbour (cos 1.00): the most confident queries of all
    for digit in (3, 7):
        a, b = np.flatnonzero(labels == digit)[:2]
        centre = result.embeddings[labels == digit].mean(axis=0)
        result.embeddings[[a, b]] = centre / np.linalg.norm(centre)
    label_of = dict(zip(result.index.tolist(), labels.tolist(), strict=True))
    rows = drawn_grid(model, digits, tmp_path, k=5, worst=4, best=4)
    for shown in (rows[:4], rows[4:]):  # the worst rows, then the best
        queries = [row[0] for row in shown]
        assert len({label_of[q] for q in queries}) == len(queries)
        for row in shown:
            assert not set(queries) & set(row[1:])


def test_distinct_queries_skip_each_others_neighbours_and_shown_classes():
    items = np.arange(8)
    labels = np.array([0, 0, 1, 1, 0, 2, 1, 2])
    # 0 and 1 are each other's nearest neighbour, as are 2 and 3; 4 has 0 among its results, 6 has 2, 7 has 5
    neighbours = np.array([[1, 4], [0, 4], [3, 6], [2, 6], [0, 1], [7, 3], [2, 3], [5, 0]])
    ranked = list(range(8))
    assert distinct_queries(ranked, items, neighbours, labels, 3) == [0, 2, 5]
    assert distinct_queries(ranked, items, neighbours, labels, 8) == [0, 2, 5]  # fewer rows rather than a duplicate
    assert distinct_queries(ranked, items, neighbours, labels, 2, shown=[0]) == [2, 5]
    # once every class is shown, further queries may repeat a class, still never a neighbour of a shown one
    same_class = np.zeros(8, dtype=int)
    apart = np.array([[(i + 4) % 8] for i in range(8)])  # i and i+4 are each other's neighbours
    chosen = distinct_queries(ranked, items, apart, same_class, 8)
    assert chosen == [0, 1, 2, 3]


def parse(caption: str) -> tuple[str, str]:
    return re.fullmatch(r"cos (-?\d\.\d+) · (\d+(?:\.\d+)?)°", caption).groups()


def test_similarity_captions_tell_near_duplicates_apart():
    cosines = [0.99991, 0.99972, 0.99951, 0.99923, 0.99904]  # five results that all read "cos 1.00"
    captions = similarity_captions(cosines)
    assert len(set(captions)) == 5
    assert len({parse(c)[1] for c in captions}) == 5  # the angles too
    for caption, cos in zip(captions, cosines, strict=True):
        cos_text, angle_text = parse(caption)
        decimals = len(cos_text.split(".")[1])
        assert abs(float(cos_text) - cos) <= 0.5 * 10**-decimals + 1e-12  # correctly rounded
        assert abs(float(angle_text) - angle_deg(cos)) <= 0.5 * 10 ** -len((angle_text + ".").split(".")[1]) + 1e-9
    # ordinary similarities keep the short form; equal ones print equal
    assert similarity_captions([0.87, 0.5, 0.5]) == ["cos 0.87 · 30°", "cos 0.50 · 60°", "cos 0.50 · 60°"]


def test_search_png_tells_its_results_apart(tmp_path):
    cosines = [0.99991, 0.99972, 0.99951, 0.99923, 0.99904]
    items = [
        {
            "rank": r,
            "name": f"g{r}",
            "path": None,
            "class_name": "3",
            "cosine": c,
            "angle_deg": angle_deg(c),
            "same_class": True,
        }
        for r, c in enumerate(cosines, start=1)
    ]
    results = [{"query": str(tmp_path / "query.png"), "class_name": "3", "results": items}]
    with mock.patch("simlearn.inference.search.save_retrieval_grid") as save:
        search._grid(tmp_path / "search.png", results, SimpleNamespace(preprocessing={"channels": 1}), 16)
    (row,) = save.call_args.args[1]
    similarities = [tile.caption.split("\n")[1] for tile in row[1:]]
    assert similarities == similarity_captions(cosines)
    assert len(set(similarities)) == 5
