"""The shareable model folder of ``simlearn-export format=hf``: reading it into an inference model and writing one.

A model folder holds (:func:`write_model_folder`):

* ``model.safetensors``: the encoder's weights (backbone and head),
* ``config.json``: what rebuilds the encoder (the backbone and head configs, the embedding size, the simlearn version)
  and ``code_bits``: the code length of a hashing model (``head=hash``: its embeddings are relaxed binary codes, and
  galleries and searches made with the folder use the packed codes, as with the checkpoint), null for floats,
* ``preprocessing.json``: how images are prepared for it (image size, channels, mean, std, crop),
* ``README.md``: its model card (written by :mod:`simlearn.export.card`).

:func:`read_model_folder` reads one into the :class:`~simlearn.inference.InferenceModel` that
:func:`simlearn.inference.load_model` (and ``simlearn.load``) gives for a checkpoint too; the Hub push is
:mod:`simlearn.export.hub`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

import simlearn
from simlearn.errors import UserError
from simlearn.inference import InferenceModel
from simlearn.models.backbones import safetensors_shapes, weights_mismatch
from simlearn.retrieval.codes import encoder_code_bits

__all__ = [
    "CARD",
    "CONFIG",
    "FILES",
    "PREPROCESSING",
    "WEIGHTS",
    "check_out",
    "folder_config",
    "folder_of",
    "read_model_folder",
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


def folder_of(path: str | os.PathLike) -> Path | None:
    """The model folder ``path`` names (the folder, or one of its files), None for a file that is none of its: a
    training checkpoint. Any folder counts, so that one that is not a model folder is told what it lacks."""
    path = Path(path).expanduser()
    if path.is_file() and path.name in FILES and (path.parent / CONFIG).is_file():
        return path.parent
    return path if path.is_dir() else None


def read_model_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> InferenceModel:
    """The inference model of a model folder (eval mode, its weights), as
    :func:`simlearn.checkpoints.checkpoint_model` gives a checkpoint's: ``config`` holds ``config.json`` (backbone,
    head, …) and the preprocessing, ``path`` is its ``model.safetensors`` (whose size and time key the galleries
    embedded with it)."""
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
    _check_code_bits(config, encoder, path)
    config_node = OmegaConf.create({**config, "preprocessing": preprocessing})
    return InferenceModel(encoder, preprocessing, config_node, path, "folder", path / WEIGHTS, device)


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


def _check_code_bits(config: Mapping[str, Any], encoder: torch.nn.Module, path: Path) -> None:
    """A folder's ``code_bits`` must be what its head makes: a hashing folder rebuilt as a float model (or the
    reverse) would search its galleries by the wrong distance. Folders written before ``code_bits`` lack it."""
    if "code_bits" not in config:
        return
    built = encoder_code_bits(encoder)
    if config["code_bits"] != built:
        makes = f"{built}-bit codes" if built is not None else "float embeddings"
        raise UserError(
            f"{str(path / CONFIG)!r} says code_bits={config['code_bits']!r}, but its head config builds an encoder of "
            f"{makes}; export the folder again (simlearn-export format=hf)."
        )


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def folder_config(model: InferenceModel) -> dict[str, Any]:
    """The ``config.json`` of ``model``'s folder: what rebuilds its encoder, and what it makes."""
    encoder = model.encoder
    bits = encoder_code_bits(encoder)
    return {
        "library_name": "simlearn",
        "simlearn_version": simlearn.__version__,
        "folder_version": FOLDER_VERSION,
        "architecture": f"{type(encoder).__module__}.{type(encoder).__name__}",
        "backbone": _plain(model.config.backbone),
        "head": _plain(model.config.head),
        "embedding_dim": model.embedding_dim,
        "code_bits": bits,
        "normalized": bits is None,
        "similarity": "cosine",
    }


def write_model_folder(model: InferenceModel, out: str | Path, card: str, overwrite: bool = False) -> Path:
    """Write the model folder of ``model`` (see the module doc) with the model card ``card`` into ``out``; returns
    ``out``.

    An ``out`` that exists and holds anything is refused (a :class:`UserError`) unless ``overwrite``, which replaces
    the folder's model files and keeps any others (a Hub clone's ``.git``). A new folder is written next to its
    place and renamed into it, so an interrupted export leaves no half-written folder."""
    out = Path(out).expanduser()
    held = check_out(out, overwrite)
    encoder = model.encoder.cpu().eval()
    config = folder_config(model)
    staging = out if held else out.with_name(f".{out.name}.partial")
    if staging != out:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_model

        save_model(encoder, str(staging / WEIGHTS), metadata={"format": "pt", "library": "simlearn"})
        (staging / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        (staging / PREPROCESSING).write_text(json.dumps(model.preprocessing, indent=2) + "\n")
        (staging / CARD).write_text(card, encoding="utf-8")
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
        model.encoder.to(model.device)  # saved from the CPU: the model stays where it was
        if staging != out:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def check_out(out: Path, overwrite: bool = False) -> list[str]:
    """The names ``out`` holds, refused (a :class:`UserError`) when it is a file, or holds anything without
    ``overwrite``: checked before the export's work is done."""
    if out.exists() and not out.is_dir():
        raise UserError(f"out={str(out)!r} is a file; give a folder for the model (it is created).")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not overwrite:
        shown = ", ".join(held[:5]) + (", …" if len(held) > 5 else "")
        raise UserError(
            f"out={str(out)!r} is not empty (it holds {shown}); export into a new or empty folder, or replace its "
            f"model files with overwrite=true."
        )
    return held
