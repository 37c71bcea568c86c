"""The model card of a model folder (``README.md``, the Hugging Face format): what was trained on what with which
loss, the test metrics and the command of the run that made it (read from its run dir), how to use it, intended use
and limitations."""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from omegaconf import OmegaConf

import simlearn
from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.inference.model_folder import CONFIG, PREPROCESSING, WEIGHTS

log = logging.getLogger(__name__)

__all__ = ["RunInfo", "model_card", "run_info"]

#: test metrics shown in the card, in this order (then any other ``test/`` keys: per-task accuracies and errors)
_CARD_METRICS = (
    "recall@1",
    "recall@5",
    "recall@10",
    "precision@1",
    "r_precision",
    "map@r",
    "knn_accuracy@5",
)


@dataclass
class RunInfo:
    """What the run that made a checkpoint left in its run dir: test metrics, the command, Hydra's config choices."""

    run_dir: Path | None
    metrics: dict[str, float]
    command: str | None
    choices: dict[str, str]


def run_info(ckpt_path: Path, metrics_path: str | Path | None = None) -> RunInfo:
    """The run dir of a checkpoint (``<run>/checkpoints/<file>.ckpt``), its ``metrics.json`` (or ``metrics_path``)
    and, from ``.hydra/``, the command that made it and the config groups it chose."""
    ckpt_path = Path(ckpt_path).resolve()
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    metrics_file = Path(metrics_path) if metrics_path else run_dir / "metrics.json"
    metrics: dict[str, float] = {}
    if metrics_file.is_file():
        try:
            metrics = {k: float(v) for k, v in json.loads(metrics_file.read_text()).items() if _number(v)}
        except (OSError, ValueError) as error:
            log.warning("the model card has no metrics: %s cannot be read (%s)", metrics_file, error)
    elif metrics_path:
        raise UserError(f"metrics={str(metrics_path)!r} does not exist; give the metrics.json of the run, or null.")
    command, choices = None, {}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        try:
            hydra_cfg = OmegaConf.load(hydra_file).hydra
            name = OmegaConf.select(hydra_cfg, "job.config_name") or "train"
            overrides = list(OmegaConf.select(hydra_cfg, "overrides.task") or [])
            command = " ".join([f"simlearn-{name}", *(shlex.quote(str(o)) for o in overrides)])
            choices = {str(k): str(v) for k, v in (OmegaConf.select(hydra_cfg, "runtime.choices") or {}).items() if v}
        except Exception as error:  # a hand-edited hydra.yaml only costs the card its command
            log.warning("the model card has no command: %s cannot be read (%s)", hydra_file, error)
    has_run = bool(metrics) or command is not None
    return RunInfo(run_dir if has_run else None, metrics, command, choices)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _target_name(node: Any) -> str:
    target = node.get("_target_", "") if isinstance(node, Mapping) else ""
    return str(target).rsplit(".", 1)[-1] or "?"


def _describe_loss(loss: Mapping[str, Any]) -> list[str]:
    """One line per task of the loss config: the loss class, its label field and weight, its main arguments."""
    if "tasks" in loss:
        lines = []
        for name, task in (loss.get("tasks") or {}).items():
            lines += [f"task `{name}`: {line}" for line in _describe_loss(task)]
        return lines
    inner = loss.get("loss") if isinstance(loss.get("loss"), Mapping) else None
    what = _target_name(inner) if inner else _target_name(loss)
    args = {k: v for k, v in (inner or loss).items() if k != "_target_" and not isinstance(v, Mapping)}
    shown = ", ".join(f"{k}={v}" for k, v in args.items() if k not in ("field", "weight") and v is not None)
    line = f"{what}" + (f" ({shown})" if shown else "")
    if loss.get("field"):
        line += f" on the label field `{loss['field']}`"
    if loss.get("miner"):
        line += f", pairs/triplets mined by {_target_name(loss['miner'])}"
    if loss.get("weight") not in (None, 1, 1.0):
        line += f", weight {loss['weight']}"
    return [line]


def model_card(
    model: InferenceModel,
    info: RunInfo,
    name: str | None = None,
    license: str | None = None,
    parameters: int | None = None,
) -> str:
    """The ``README.md`` of a model folder: Hugging Face YAML front matter, then the model, its training data and
    loss, the test metrics of its run (from ``metrics.json``), the command that made it, how to use it, intended use
    and limitations."""
    config = OmegaConf.to_container(model.config, resolve=True)
    data = config.get("data") or {}
    prep = model.preprocessing
    dataset = info.choices.get("data") or _target_name(data).removesuffix("DataModule").lower()
    loss_choice = info.choices.get("loss") or _target_name(config.get("loss") or {})
    backbone_choice = info.choices.get("backbone") or _target_name(config["backbone"])
    name = name or f"simlearn-{dataset}-{loss_choice}"
    test = {key.removeprefix("test/"): value for key, value in info.metrics.items() if key.startswith("test/")}
    shown = [m for m in _CARD_METRICS if m in test]
    shown += sorted(k for k in test if k not in shown and k not in ("num_queries", "num_lone_queries"))
    front: dict[str, Any] = {
        "library_name": "simlearn",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["simlearn", "metric-learning", "image-similarity", "image-retrieval", loss_choice, backbone_choice],
        "datasets": [dataset],
        "metrics": ["recall", "precision", "mean_average_precision"] if shown else [],
    }
    if license:
        front["license"] = license
    if shown:
        front["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-feature-extraction", "name": "Image retrieval"},
                        "dataset": {"name": dataset, "type": dataset, "split": "test"},
                        "metrics": [
                            {"type": metric, "name": f"test {metric}", "value": test[metric]} for metric in shown
                        ],
                    }
                ],
            }
        ]
    dim = model.embedding_dim
    channels = "grey" if int(prep["channels"]) == 1 else "RGB"
    label_field = data.get("label_field")
    classes = data.get("classes") or (list(range(int(data["num_classes"]))) if data.get("num_classes") else None)
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"An image-similarity encoder trained with simlearn {simlearn.__version__} (metric learning, PyTorch): "
        f"it maps a {channels} image to a {dim}-d embedding of unit length; the cosine of two embeddings is how "
        f"similar the images are (cos 0.90 = 25.8° apart).",
        "",
        "## Model",
        "",
        f"- backbone: `{_target_name(config['backbone'])}` (`backbone={backbone_choice}`), head: "
        f"`{_target_name(config['head'])}` → {dim}-d, L2-normalised"
        + (f"; {parameters:,} parameters" if parameters else ""),
        f"- initial weights: {_initial_weights(config['backbone'], dataset)}",
        f"- input: {channels}, {prep['image_size']}×{prep['image_size']} pixels ({_crop(prep)}), scaled to [0, 1], "
        f"normalised with mean {_round(prep['mean'])} and std {_round(prep['std'])} (`{PREPROCESSING}`; "
        f"`simlearn.load` does all of it)",
        f"- files: `{WEIGHTS}` (weights), `{CONFIG}` (the encoder's config), `{PREPROCESSING}`",
        "",
        "## Training",
        "",
        f"- data: `{dataset}` (`{_target_name(data)}`"
        + (f", label field `{label_field}`" if label_field else "")
        + (f", {len(classes)} classes" if classes else "")
        + ")",
        *[f"- loss: {line}" for line in _describe_loss(config.get("loss") or {})],
    ]
    epochs = info.metrics.get("train/epochs")
    if epochs is not None:
        wall = info.metrics.get("train/wall_s")
        lines.append(f"- {int(epochs)} epochs" + (f", {wall:.0f} s of training" if wall is not None else ""))
    lines.append(f"- checkpoint: `{model.path.name}`")
    if info.command:
        lines += ["", "The command that trained it:", "", "```bash", info.command, "```"]
    lines += ["", "## Evaluation", ""]
    if shown:
        queries = test.get("num_queries")
        lines += [
            "Exact retrieval on the held-out test split"
            + (f" ({int(queries)} queries, each against all other test items)" if queries else "")
            + ", from the run's `metrics.json`:",
            "",
            "| metric | value |",
            "| --- | --- |",
            *[f"| {metric} | {test[metric]:.4f} |" for metric in shown],
        ]
    else:
        lines.append(
            "No test metrics were found next to the checkpoint (no `metrics.json` in its run dir); evaluate it with "
            "`simlearn-eval ckpt_path=…` before relying on it."
        )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import simlearn",
        "",
        'model = simlearn.load("path/to/this/folder")',
        f'embeddings = model.embed(["a.png", "b.png"])  # ({2}, {dim}) float32, unit length',
        "similarity = float(embeddings[0] @ embeddings[1])  # cosine",
        "```",
        "",
        "`embed` takes image paths, PIL images, uint8 pixel arrays or prepared float tensors, one or a list.",
        "",
        "## Intended use",
        "",
        f"Finding similar images among images like the training data (`{dataset}`): reverse image search, "
        "near-duplicates, browsing a collection from like to like, and features for nearest-neighbour classification "
        "of the same kind of images (e.g. with `simlearn-embed`, `simlearn-search`).",
        "",
        "## Limitations",
        "",
        f"- It was trained on `{dataset}` alone: images of another kind (content, resolution, colour) are embedded, "
        "but their similarities mean little; measure retrieval on labelled images of your own before relying on it.",
        *(
            [
                f"- Its backbone started from random weights, not from a pretrained image model: it has seen no images "
                f"but `{dataset}`'s."
            ]
            if not config["backbone"].get("pretrained")
            else []
        ),
        "- A cosine is a similarity score, not a probability: a threshold for 'same' must be chosen on labelled pairs "
        "of your data.",
        "- The metrics above come from one run and one test split, without error bars.",
        "- Whatever biases the training data holds, the embedding holds too; it is not meant for identifying people "
        "or for decisions about them.",
        "",
    ]
    return "\n".join(lines)


def _initial_weights(backbone: Mapping[str, Any], dataset: str) -> str:
    """Where the backbone's weights started: a reader assumes a published image model was pretrained, so a model
    trained from random weights says so (a backbone without a ``pretrained`` key, such as small_cnn, always is)."""
    pretrained = backbone.get("pretrained")
    if not pretrained:
        why = "`backbone.pretrained=false`" if "pretrained" in backbone else f"`{_target_name(backbone)}` has none"
        return (
            f"**random**, not pretrained ({why}): everything the backbone knows was learnt from `{dataset}` in this run"
        )
    name = backbone.get("name") or _target_name(backbone)
    source = backbone.get("checkpoint_path") or (pretrained if isinstance(pretrained, str) else None)
    return f"pretrained: `{name}`" + (f" from `{source}`" if source else " with its library's default weights")


def _crop(prep: Mapping[str, Any]) -> str:
    """How an image is resized and cropped to the input, in words (``preprocessing.json``'s crop keys)."""
    size, crop_pct = int(prep["image_size"]), prep.get("crop_pct")
    interpolation = prep.get("interpolation") or "bilinear"
    if not crop_pct or crop_pct == 1:
        return f"shorter side resized to {size} ({interpolation}), centre cropped"
    return (
        f"shorter side resized to {math.floor(size / crop_pct)} ({interpolation}), the centre {size}×{size} cropped: "
        f"crop_pct {crop_pct}, the backbone's evaluation transform"
    )


def _round(values: Sequence[float]) -> list[float]:
    return [round(float(v), 4) for v in values]
