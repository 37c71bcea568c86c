"""The model card (simlearn/export/card.py) of an exported model folder: the run's real metrics and command, and
what its initial weights were."""

from __future__ import annotations

import json

import yaml

from simlearn.inference import load_model
from simlearn.inference.model_folder import CARD


def test_model_card_holds_the_runs_metrics_and_command(exported):
    card = (exported["folder"] / CARD).read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "simlearn" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["datasets"] == ["digits"] and {"simlearn", "metric-learning", "softmax"} <= set(meta["tags"])
    metrics = json.loads((exported["run"] / "metrics.json").read_text())
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test"
    reported = {m["type"]: m["value"] for m in result["metrics"]}
    assert reported["recall@1"] == metrics["test/recall@1"] and reported["map@r"] == metrics["test/map@r"]
    for name in ("recall@1", "recall@5", "precision@1", "r_precision", "map@r", "knn_accuracy@5"):
        assert f"| {name} | {metrics[f'test/{name}']:.4f} |" in body
    assert f"{int(metrics['test/num_queries'])} queries" in body
    overrides = yaml.safe_load((exported["run"] / ".hydra" / "overrides.yaml").read_text())
    assert f"simlearn-train {' '.join(overrides)}\n" in body
    assert "NormalizedSoftmaxLoss" in body and "label field `digit`" in body and "`DigitsDataModule`" in body
    for heading in ("## Training", "## Evaluation", "## Intended use", "## Limitations", "## Use"):
        assert heading in body


def test_the_card_says_when_the_backbone_started_from_random_weights(exported):
    """A reader assumes a shared image model was pretrained: a card of random initial weights says so (small_cnn has
    no pretrained weights at all; timm/torchvision with backbone.pretrained=false neither), a pretrained one names
    its weights."""
    from simlearn.export.card import RunInfo, model_card

    card = (exported["folder"] / CARD).read_text()
    assert "- initial weights: **random**, not pretrained (`SmallCNN` has none)" in card
    assert "started from random weights, not from a pretrained image model" in card
    loaded = load_model(exported["ckpt"])
    info = RunInfo(None, {}, None, {})
    timm_backbone = {"_target_": "simlearn.models.backbones.TimmBackbone", "name": "resnet50.a1_in1k"}
    cases = [
        (False, "**random**, not pretrained (`backbone.pretrained=false`)"),
        (True, "- initial weights: pretrained: `resnet50.a1_in1k` with its library's"),
    ]
    for pretrained, expected in cases:
        loaded.config.backbone = {**timm_backbone, "pretrained": pretrained}
        card = model_card(loaded, info)
        assert expected in card
        assert ("started from random weights" in card) is (not pretrained)
    assert "1×8×8" not in card and "shorter side resized to 8 (bilinear), centre cropped" in card  # no crop record
    loaded.preprocessing = {**loaded.preprocessing, "image_size": 160, "crop_pct": 0.95, "interpolation": "bicubic"}
    assert "resized to 168 (bicubic), the centre 160×160 cropped: crop_pct 0.95" in model_card(loaded, info)
