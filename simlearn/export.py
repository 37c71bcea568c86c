"""Export a checkpoint's encoder: ``simlearn-export ckpt_path=PATH format=onnx|torchscript|hf [out=PATH]``.

``format=hf`` writes a shareable model folder (safetensors weights, config, preprocessing, model card; optionally
pushed to the Hugging Face Hub), see :mod:`simlearn.model_folder`.

For ONNX and TorchScript, the exported model takes the preprocessed image batch ``image`` (N, C, H, W), any N, and
returns the unit-length embeddings ``embedding`` (N, d). ``<out>.json`` next to it says how to preprocess images
(image_size, channels, mean, std: resize, scale to [0, 1], normalise) and the embedding dimension, so it can be used
without simlearn.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import nn

from simlearn.checkpoints import load_encoder
from simlearn.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "check_export", "export_encoder", "export_onnx", "export_torchscript", "run_exported"]

#: format → default file (or folder) name
FORMATS = {"onnx": "encoder.onnx", "torchscript": "encoder.pt", "hf": "model"}
#: largest |exported − PyTorch| embedding difference the check accepts
TOLERANCE = 1e-4


def _export_extra() -> str:
    return "pip install 'simlearn[export]' (onnx, onnxscript, onnxruntime)"


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: Path, opset: int | None = None) -> Path:
    """ONNX with a dynamic batch dimension, through torch.export (needs onnx and onnxscript)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"format=onnx needs the onnx and onnxscript packages ({error}); {_export_extra()}.") from error
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    batch = torch.export.Dim("batch", min=1)
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines about graph passes are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            encoder,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    return path


def export_torchscript(encoder: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """TorchScript by tracing (the encoder has no data-dependent control flow, so any batch size works)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # torch.jit is deprecated upstream
        traced = torch.jit.trace(encoder, example, check_trace=False)
        traced.save(str(path))
    return path


def export_encoder(encoder: nn.Module, example: torch.Tensor, path: Path, fmt: str, opset: int | None = None) -> Path:
    if fmt not in FORMATS or fmt == "hf":
        raise UserError(f"format={fmt!r} is not an export format; valid: {sorted(FORMATS)}.")
    encoder = encoder.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        return export_onnx(encoder, example, path, opset)
    return export_torchscript(encoder, example, path)


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray | None:
    """Embeddings of ``images`` by the exported model (ONNX through onnxruntime; None when it is not installed)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            model = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return model(images).numpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"image": images.numpy()})[0]


def check_export(path: Path, fmt: str, encoder: nn.Module, images: torch.Tensor) -> float | None:
    """Largest absolute difference between the exported model's and PyTorch's embeddings of ``images``."""
    exported = run_exported(path, fmt, images)
    if exported is None:
        return None
    with torch.no_grad():
        expected = encoder.eval().cpu()(images).numpy()
    if exported.shape != expected.shape:
        raise UserError(f"the exported model returned shape {exported.shape}, expected {expected.shape}.")
    return float(np.abs(exported - expected).max())


def export(cfg: DictConfig) -> Path:
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is not an export format; valid: {sorted(FORMATS)}.")
    if fmt == "hf":
        return export_folder(cfg)
    loaded = load_encoder(cfg.ckpt_path)
    prep = loaded.preprocessing
    shape = (int(prep["channels"]), int(prep["image_size"]), int(prep["image_size"]))
    out = Path(cfg.get("out") or Path(cfg.paths.output_dir) / FORMATS[fmt])
    generator = torch.Generator().manual_seed(0)
    export_encoder(loaded.encoder, torch.randn(2, *shape, generator=generator), out, fmt, cfg.get("opset"))
    sidecar = out.with_name(out.name + ".json")
    sidecar.write_text(
        json.dumps(
            {
                "format": fmt,
                "input": {"name": "image", "shape": ["batch", *shape], "dtype": "float32"},
                "output": {"name": "embedding", "shape": ["batch", loaded.embedding_dim], "normalized": True},
                "preprocessing": prep,
                "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
            },
            indent=2,
        )
        + "\n"
    )
    console = Console()
    console.print(f"exported the {fmt} encoder to {out} (preprocessing in {sidecar})", highlight=False)
    if cfg.get("check", True):
        difference = check_export(out, fmt, loaded.encoder, torch.randn(3, *shape, generator=generator))
        if difference is None:
            console.print("no check: onnxruntime is not installed (pip install onnxruntime)", highlight=False)
        elif difference > TOLERANCE:
            raise UserError(
                f"the exported model's embeddings differ from PyTorch's by up to {difference:.2e} (> {TOLERANCE}); "
                f"the export is not faithful, please report it with the checkpoint's backbone config."
            )
        else:
            console.print(f"check: embeddings of a batch of 3 match PyTorch's (max |Δ| = {difference:.1e})")
    return out


def export_folder(cfg: DictConfig) -> Path:
    """``format=hf``: the model folder (:func:`simlearn.model_folder.write_model_folder`), checked by loading it back
    and comparing its embeddings with the checkpoint's, then pushed to the Hub when ``push_to_hub=REPO_ID``."""
    from simlearn.model_folder import check_repo_id, load, push_to_hub, write_model_folder

    repo_id = cfg.get("push_to_hub")
    if repo_id:
        check_repo_id(str(repo_id))  # a malformed id fails before anything is written
    out = Path(cfg.get("out") or Path(cfg.paths.output_dir) / FORMATS["hf"])
    folder = write_model_folder(cfg.ckpt_path, out, bool(cfg.get("overwrite")), cfg.get("license"), cfg.get("metrics"))
    console = Console()
    console.print(f"wrote the model folder {folder} (model.safetensors, config.json, preprocessing.json, README.md)")
    if cfg.get("check", True):
        loaded = load_encoder(cfg.ckpt_path)
        prep = loaded.preprocessing
        shape = (int(prep["channels"]), int(prep["image_size"]), int(prep["image_size"]))
        images = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = loaded.encoder.eval()(images).numpy()
        difference = float(np.abs(load(folder).embed(images) - expected).max())
        if difference > 1e-6:
            raise UserError(
                f"the model folder's embeddings differ from the checkpoint's by up to {difference:.2e}; the export is "
                f"not faithful, please report it with the checkpoint's backbone config."
            )
        console.print(f"check: simlearn.load({str(folder)!r}) embeds like the checkpoint (max |Δ| = {difference:.1e})")
    if repo_id:
        url = push_to_hub(folder, str(repo_id), bool(cfg.get("hub_private", True)))
        console.print(f"pushed to {url}", highlight=False)
    return folder
