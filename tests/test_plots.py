"""The plots report: embedding scatter and retrieval grid PNGs, logged to wandb when a WandbLogger is present."""

from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from lightning.pytorch.loggers import WandbLogger

from simlearn.build import build_datamodule
from simlearn.config import compose_config
from simlearn.models import EmbeddingSet
from simlearn.reports import PlotsReport
from simlearn.reports.plots import save_embedding_scatter

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
    result = EmbeddingSet(embeddings=embeddings, fields={"digit": labels}, index=test.indices.numpy())
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
