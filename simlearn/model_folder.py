"""A shareable model folder, and embedding images with a trained model in one call.

``simlearn-export format=hf`` writes (:func:`write_model_folder`):

* ``model.safetensors``: the encoder's weights (backbone and head),
* ``config.json``: what rebuilds the encoder (the backbone and head configs, the embedding size, the simlearn version),
* ``preprocessing.json``: how images are prepared for it (image size, channels, mean, std),
* ``README.md``: a model card in the Hugging Face format (YAML front matter, then what was trained on what with which
  loss, the test metrics of the run, the command that made it, intended use and limitations),

and can push the folder to the Hugging Face Hub (:func:`push_to_hub`). :func:`load` reads such a folder (or, for
convenience, a training checkpoint) into a :class:`SimilarityModel`, whose :meth:`~SimilarityModel.embed` takes image
files, PIL images, arrays or tensors and returns unit-length float32 embeddings.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

import simlearn
from simlearn.checkpoints import LoadedEncoder, load_encoder
from simlearn.data.image_files import image_mode
from simlearn.data.images import DECODE_ERRORS, ImageLoader
from simlearn.errors import UserError
from simlearn.evaluation.vectors import unit_rows
from simlearn.models.backbones import safetensors_shapes, weights_mismatch

log = logging.getLogger(__name__)

__all__ = [
    "CARD",
    "CONFIG",
    "PREPROCESSING",
    "WEIGHTS",
    "SimilarityModel",
    "load",
    "model_card",
    "push_to_hub",
    "write_model_folder",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREPROCESSING = "preprocessing.json"
CARD = "README.md"
#: the files a model folder consists of (an existing folder may hold others: a Hub clone's .git, …)
FILES = (WEIGHTS, CONFIG, PREPROCESSING, CARD)
#: bumped when the folder layout changes incompatibly
FOLDER_VERSION = 1
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


# ---------------------------------------------------------------- the model


class SimilarityModel:
    """A trained encoder and the image preprocessing it expects: ``model.embed(images)`` gives their unit-length
    embeddings; the cosine of two is their similarity (``emb[0] @ emb[1]``)."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        preprocessing: Mapping[str, Any],
        config: Mapping[str, Any],
        source: Path,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.preprocessing = dict(preprocessing)
        self.config = dict(config)
        self.source = source
        self._loader = ImageLoader(self.preprocessing)

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.embedding_dim)

    def __repr__(self) -> str:
        prep = self.preprocessing
        return (
            f"SimilarityModel({self.source}, {self.embedding_dim}-d, input {prep['channels']}x{prep['image_size']}x"
            f"{prep['image_size']}, {self.device})"
        )

    def prepare(self, image: Any) -> torch.Tensor:
        """One image as model input (channels, size, size): a file path, a PIL image, a uint8 array or tensor
        (H, W), (H, W, C) array or (C, H, W) tensor of pixel values, all prepared as the model was trained (converted
        to its channels, resized and centre-cropped, scaled to [0, 1], normalised); or a float tensor/array that
        already is model input (channels, size, size)."""
        if isinstance(image, str | os.PathLike):
            try:
                return self._loader(image)
            except DECODE_ERRORS as error:
                raise UserError(
                    f"{str(image)!r} is not an image that can be read ({type(error).__name__}: {error})."
                ) from error
        if isinstance(image, Image.Image):
            return self._loader.transform(image.convert(image_mode(self._loader.channels)))
        if isinstance(image, np.ndarray) and image.dtype == np.uint8:
            return self.prepare(Image.fromarray(image))
        if isinstance(image, torch.Tensor) and image.dtype == torch.uint8:
            pixels = image.detach().cpu()
            if pixels.ndim == 3:  # torchvision's (C, H, W)
                pixels = pixels.permute(1, 2, 0).squeeze(2) if pixels.shape[0] in (1, 3, 4) else pixels
            return self.prepare(Image.fromarray(pixels.numpy()))
        if isinstance(image, np.ndarray | torch.Tensor):
            tensor = torch.as_tensor(image)
            expected = (self._loader.channels, self._loader.image_size, self._loader.image_size)
            if not tensor.is_floating_point() or tuple(tensor.shape) != expected:
                raise UserError(
                    f"an image tensor must be model input: float of shape {expected} (or a batch (N, "
                    f"{', '.join(map(str, expected))})), got {tensor.dtype} {tuple(tensor.shape)}; pass raw pixels as "
                    f"uint8, a PIL image or a file path to have them prepared."
                )
            return tensor.float()
        raise UserError(
            f"cannot embed a {type(image).__name__}: give image file paths, PIL images, uint8 pixel arrays or "
            f"prepared float tensors (one, a list, or a batch tensor)."
        )

    @torch.no_grad()
    def embed(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """The unit-length float32 embeddings of ``images``: (d,) for one image (a path, a PIL image, an array or a
        (C, H, W) tensor), (N, d) for a list of them or a batch tensor (N, C, H, W). See :meth:`prepare` for what
        each kind of input means."""
        single = not isinstance(images, list | tuple)
        if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
            items, single = list(images), False
        else:
            items = [images] if single else list(images)
        if not items:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        parts = []
        for start in range(0, len(items), batch_size):
            batch = torch.stack([self.prepare(image) for image in items[start : start + batch_size]])
            parts.append(self.encoder(batch.to(self.device)).float().cpu().numpy())
        # a head with normalize=false gives raw vectors: scaled here (unit ones are returned as they are)
        embeddings = unit_rows(np.concatenate(parts), np.float32, tolerance=1e-6)
        return embeddings[0] if single else embeddings

    __call__ = embed


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> SimilarityModel:
    """The model of a folder written by ``simlearn-export format=hf`` (or of a training checkpoint ``.ckpt``),
    ready to :meth:`~SimilarityModel.embed` images on ``device``."""
    loaded = load_encoder(path, device)  # either kind: simlearn.checkpoints reads both
    folder = folder_of(path)
    if folder is None:
        config = {"backbone": _plain(loaded.config.backbone), "head": _plain(loaded.config.head)}
        return SimilarityModel(loaded.encoder, loaded.preprocessing, config, Path(path).expanduser(), device)
    config = {key: value for key, value in _plain(loaded.config).items() if key != "preprocessing"}
    return SimilarityModel(loaded.encoder, loaded.preprocessing, config, folder, device)


def folder_of(path: str | os.PathLike) -> Path | None:
    """The model folder ``path`` names (the folder, or one of its files), None for a file that is none of its: a
    training checkpoint. Any folder counts, so that one that is not a model folder is told what it lacks."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in FILES and (path.parent / CONFIG).is_file():
        return path.parent
    return path if path.is_dir() else None


def read_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedEncoder:
    """The encoder of a model folder (eval mode, its weights) as :func:`simlearn.checkpoints.load_encoder` gives a
    checkpoint's: ``config`` holds ``config.json`` (backbone, head, …) and the preprocessing, ``path`` is its
    ``model.safetensors`` (whose size and time key the galleries embedded with it)."""
    path = Path(folder).expanduser()
    missing = [name for name in (WEIGHTS, CONFIG, PREPROCESSING) if not (path / name).is_file()]
    if missing:
        raise UserError(
            f"{str(path)!r} is not a simlearn model folder: it lacks {missing}, and a folder is no training "
            f"checkpoint; give a .ckpt written by training, or a folder written by simlearn-export ckpt_path=… "
            f"format=hf."
        )
    try:
        config = json.loads((path / CONFIG).read_text())
        preprocessing = json.loads((path / PREPROCESSING).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{str(path)!r}: its {CONFIG} or {PREPROCESSING} cannot be read ({error}).") from error
    if config.get("library_name") != "simlearn" or "backbone" not in config or "head" not in config:
        raise UserError(f"{str(path / CONFIG)!r} was not written by simlearn-export format=hf (no simlearn encoder).")
    encoder = _build(config, path)
    from safetensors.torch import load_model

    again = "export the folder again (simlearn-export format=hf) or download it again"
    try:
        shapes = safetensors_shapes(path / WEIGHTS)
    except Exception as error:  # safetensors' own error, a truncated or foreign file, an unreadable one
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"{str(path / WEIGHTS)!r} is not a readable safetensors file ({type(error).__name__}: {message}): a "
            f"download or copy cut short, or another format. Fix: {again}."
        ) from error
    problem = weights_mismatch(encoder, shapes)
    if problem is not None:
        raise UserError(f"{str(path / WEIGHTS)!r} does not fit {CONFIG} ({problem}). Fix: {again}.")
    load_model(encoder, str(path / WEIGHTS))
    return LoadedEncoder(
        encoder=encoder.to(device).eval(),
        preprocessing=preprocessing,
        config=OmegaConf.create({**config, "preprocessing": preprocessing}),
        path=path / WEIGHTS,
    )


def _build(config: Mapping[str, Any], path: Path) -> torch.nn.Module:
    from simlearn.build import build_encoder

    backbone = dict(config["backbone"])
    if backbone.get("pretrained"):  # the folder's weights replace them: never fetch
        backbone["pretrained"] = False
    try:
        return build_encoder({"backbone": backbone, "head": config["head"]})
    except UserError:
        raise
    except Exception as error:  # a backbone class this installation lacks, arguments it does not take, …
        raise UserError(
            f"the encoder of {str(path)!r} cannot be built here ({type(error).__name__}: {error}); it was written by "
            f"simlearn {config.get('simlearn_version', '?')}, this is {simlearn.__version__}."
        ) from error


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


# ---------------------------------------------------------------- writing the folder


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
    loaded: LoadedEncoder,
    info: RunInfo,
    name: str | None = None,
    license: str | None = None,
    parameters: int | None = None,
) -> str:
    """The ``README.md`` of a model folder: Hugging Face YAML front matter, then the model, its training data and
    loss, the test metrics of its run (from ``metrics.json``), the command that made it, how to use it, intended use
    and limitations."""
    config = _plain(loaded.config)
    data = config.get("data") or {}
    prep = loaded.preprocessing
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
    dim = loaded.embedding_dim
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
    lines.append(f"- checkpoint: `{loaded.path.name}`")
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


def write_model_folder(
    ckpt_path: str | Path,
    out: str | Path,
    overwrite: bool = False,
    license: str | None = None,
    metrics_path: str | Path | None = None,
) -> Path:
    """Write the model folder of a checkpoint into ``out`` (see the module doc); returns ``out``.

    An ``out`` that exists and holds anything is refused (a :class:`UserError`) unless ``overwrite``, which replaces
    the folder's model files and keeps any others (a Hub clone's ``.git``). A new folder is written next to its
    place and renamed into it, so an interrupted export leaves no half-written folder."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} is a file; give a folder for the model (it is created).")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", …" if len(held) > 5 else "")
        raise UserError(
            f"out={str(out)!r} is not empty (it holds {shown}); export into a new or empty folder, or replace its "
            f"model files with overwrite=true."
        )
    loaded = load_encoder(ckpt_path)
    info = run_info(Path(ckpt_path), metrics_path)
    encoder = loaded.encoder.cpu().eval()
    parameters = sum(p.numel() for p in encoder.parameters())
    config = {
        "library_name": "simlearn",
        "simlearn_version": simlearn.__version__,
        "folder_version": FOLDER_VERSION,
        "architecture": f"{type(encoder).__module__}.{type(encoder).__name__}",
        "backbone": _plain(loaded.config.backbone),
        "head": _plain(loaded.config.head),
        "embedding_dim": loaded.embedding_dim,
        "normalized": True,
        "similarity": "cosine",
    }
    staging = out if held else out.with_name(f".{out.name}.partial")
    if staging != out:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_model

        save_model(encoder, str(staging / WEIGHTS), metadata={"format": "pt", "library": "simlearn"})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (staging / PREPROCESSING).write_text(json.dumps(loaded.preprocessing, indent=2) + "\n")
        (staging / CARD).write_text(model_card(loaded, info, None, license, parameters), encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        for file in FILES:  # safetensors writes its file private (0600): a shareable folder is readable as usual
            (staging / file).chmod(0o666 & ~mask)
        if staging != out:
            if out.is_dir():
                out.rmdir()  # empty (checked above)
            os.replace(staging, out)
    except OSError as error:
        raise UserError(f"could not write the model folder {str(out)!r} ({error.strerror or error}).") from error
    finally:
        if staging != out:
            shutil.rmtree(staging, ignore_errors=True)
    return out


# ---------------------------------------------------------------- the Hub


def check_repo_id(repo_id: str) -> None:
    """A Hub repository id (``user/name``) that cannot be one, as a :class:`UserError` (before anything is written)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError as error:
        raise UserError(f"push_to_hub needs huggingface_hub ({error}); pip install 'simlearn[hub]'.") from error
    try:
        validate_repo_id(str(repo_id))
    except HFValidationError as error:
        raise UserError(f"push_to_hub={repo_id!r} is not a Hub repository id like user/name ({error}).") from error
    if "/" not in str(repo_id):
        raise UserError(f"push_to_hub={repo_id!r} needs a namespace: user/name or organisation/name.")


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created when missing, private unless told) and
    return its URL. Offline (``HF_HUB_OFFLINE``), without credentials or when the Hub cannot be reached: a
    :class:`UserError` that says so and where the folder is kept."""
    check_repo_id(repo_id)
    from huggingface_hub import HfApi, constants, get_token

    kept = f"the model folder is kept at {folder}; push it later with `hf upload {repo_id} {folder}`"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"cannot push to the Hugging Face Hub: HF_HUB_OFFLINE is set; {kept}.")
    try:
        token = token or get_token()
    except Exception as error:  # an OIDC token exchange (HF_OIDC_RESOURCE) that failed
        raise UserError(f"cannot push to the Hugging Face Hub: no usable credentials ({error}); {kept}.") from error
    if not token:
        raise UserError(
            f"cannot push to the Hugging Face Hub: no credentials (set HF_TOKEN or run `hf auth login`); {kept}."
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"simlearn-export format=hf (simlearn {simlearn.__version__})",
        )
    except Exception as error:  # no network, a rejected token, no write access: all said in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"could not push to the Hugging Face Hub repository {repo_id} ({first}); {kept}.") from error
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo_id}")
