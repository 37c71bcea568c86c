"""Tasks route label fields to PML losses; the multi-task total is their weighted sum."""

import pytest
import torch
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss, TripletMarginLoss
from torch.nn import functional as F

from simlearn.errors import UserError
from simlearn.losses import MetricTask, MultiTaskLoss, RegressionTask


@pytest.fixture
def batch():
    torch.manual_seed(0)
    digits = torch.arange(32) % 10
    return F.normalize(torch.randn(32, 8), dim=1), {"digit": digits, "parity": digits % 2, "magnitude": digits}


def test_total_is_the_weighted_sum_of_task_losses(batch):
    embeddings, fields = batch
    tasks = {
        "digit": MetricTask("digit", NormalizedSoftmaxLoss(10, 8), weight=1.0),
        "parity": MetricTask("parity", NormalizedSoftmaxLoss(2, 8), weight=0.5),
        "magnitude": RegressionTask("magnitude", 8, weight=0.25, center=4.5, scale=4.5),
    }
    losses = MultiTaskLoss(tasks)(embeddings, fields)
    expected = losses["digit"] + 0.5 * losses["parity"] + 0.25 * losses["magnitude"]
    assert torch.allclose(losses["loss"], expected)
    # each task read its own field: the parity loss equals PML's on the parity labels
    assert torch.allclose(losses["parity"], tasks["parity"].loss(embeddings, fields["parity"]))


def test_a_single_task_is_wrapped_under_its_field_name(batch):
    embeddings, fields = batch
    loss = MultiTaskLoss.wrap(MetricTask("digit", TripletMarginLoss()))
    assert list(loss.tasks) == ["digit"]
    assert set(loss(embeddings, fields)) == {"loss", "digit"}
    with pytest.raises(UserError, match="wrap a PML loss"):
        MultiTaskLoss.wrap(TripletMarginLoss())


def test_classifier_predicts_with_the_cosine_to_its_class_weights():
    task = MetricTask("digit", NormalizedSoftmaxLoss(3, 2))
    with torch.no_grad():
        task.loss.W.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) * 5)  # classes at 0°, 90°, 180°
    embeddings = torch.tensor([[0.9, 0.1], [0.2, 0.8], [-1.0, 0.3]])
    assert task.predict(embeddings).tolist() == [0, 1, 2]
    assert MetricTask("digit", TripletMarginLoss()).predict(embeddings) is None


def test_regression_predicts_in_the_field_units():
    task = RegressionTask("magnitude", 2, center=4.5, scale=4.5)
    with torch.no_grad():
        task.readout.weight.copy_(torch.tensor([[1.0, 0.0]]))
        task.readout.bias.zero_()
    assert task.predict(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).tolist() == [9.0, 0.0]


def test_fields_and_classes_are_checked_against_the_data(batch):
    _, fields = batch
    loss = MultiTaskLoss({"colour": MetricTask("colour", TripletMarginLoss())})
    with pytest.raises(UserError, match="reads label field 'colour'.*provides"):
        loss.check_fields(fields)
    loss = MultiTaskLoss({"digit": MetricTask("digit", NormalizedSoftmaxLoss(5, 8))})
    with pytest.raises(UserError, match="has 5 classes but the data has label 9"):
        loss.check_fields(fields)
