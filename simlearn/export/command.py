"""``simlearn-export ckpt_path=PATH format=onnx|torchscript|hf [out=PATH]``: the command, for each format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from simlearn.errors import UserError
from simlearn.export.formats import FORMATS, TOLERANCE, check_codes, check_export, export_encoder
from simlearn.inference import load_model
from simlearn.retrieval.codes import encoder_code_bits, pack_codes

__all__ = ["export", "export_folder"]


def export(cfg: DictConfig) -> Path:
    """Export ``cfg.ckpt_path``'s encoder as ``cfg.format`` into ``cfg.out`` (or the run dir), checked against
    PyTorch's embeddings unless ``check=false``; returns the file (or folder) written."""
    fmt = str(cfg.get("format", "onnx")).lower()
    if fmt not in FORMATS:
        raise UserError(f"format={fmt!r} is not an export format; valid: {sorted(FORMATS)}.")
    if fmt == "hf":
        return export_folder(cfg)
    out = Path(cfg.get("out") or Path(cfg.paths.output_dir) / FORMATS[fmt]).expanduser()
    check_out_file(out, bool(cfg.get("overwrite")), fmt)  # before the checkpoint is read: nothing done, nothing lost
    model = load_model(cfg.ckpt_path)
    shape = model.input_shape
    generator = torch.Generator().manual_seed(0)
    export_encoder(model.encoder, torch.randn(2, *shape, generator=generator), out, fmt, cfg.get("opset"))
    bits = encoder_code_bits(model.encoder)
    sidecar = out.with_name(out.name + ".json")
    output = {"name": "embedding", "shape": ["batch", model.embedding_dim], "normalized": bits is None}
    described: dict = {"code_bits": bits}
    if bits is not None:  # ONNX: the graph's second output (CodeOutputs); TorchScript: a method (CodeMethod)
        where = {"name": "codes"} if fmt == "onnx" else {"method": "codes"}
        described["codes"] = {**where, "shape": ["batch", bits // 8], "dtype": "uint8", "packing": "packbits"}
    sidecar.write_text(
        json.dumps(
            {
                "format": fmt,
                "input": {"name": "image", "shape": ["batch", *shape], "dtype": "float32"},
                "output": output,
                **described,
                "preprocessing": model.preprocessing,
                "ckpt_path": str(Path(cfg.ckpt_path).resolve()),
            },
            indent=2,
        )
        + "\n"
    )
    console = Console()
    console.print(f"exported the {fmt} encoder to {out} (preprocessing in {sidecar})", highlight=False)
    if cfg.get("check", True):
        difference = check_export(out, fmt, model.encoder, torch.randn(3, *shape, generator=generator))
        if difference is None:
            console.print("no check: onnxruntime is not installed (pip install onnxruntime)", highlight=False)
        elif difference > TOLERANCE:
            raise UserError(
                f"the exported model's embeddings differ from PyTorch's by up to {difference:.2e} (> {TOLERANCE}); "
                f"the export is not faithful, please report it with the checkpoint's backbone config."
            )
        else:
            console.print(f"check: embeddings of a batch of 3 match PyTorch's (max |Δ| = {difference:.1e})")
        if bits is not None:
            _check_exported_codes(out, fmt, model.encoder, torch.randn(8, *shape, generator=generator), console)
    return out


def check_out_file(out: Path, overwrite: bool = False, fmt: str = "onnx") -> None:
    """``out`` (the exported file) and its ``.json`` sidecar: a folder in the way, or a file already there without
    ``overwrite``, is one :class:`UserError` line, before any work (an export would replace the file silently)."""
    if out.is_dir():
        raise UserError(f"out={str(out)!r} is a folder; give the file to write, e.g. out={out / FORMATS[fmt]}.")
    held = [str(p) for p in (out, out.with_name(out.name + ".json")) if p.exists()]
    if held and not overwrite:
        raise UserError(
            f"out={str(out)!r}: {' and '.join(repr(p) for p in held)} already exist(s); simlearn-export does not write "
            f"over an export. Give another out=PATH, or replace them with overwrite=true."
        )
    try:  # its folder: made now, so that a file in the way or a read-only place is one line before any work
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"out={str(out)!r}: its folder cannot be made ({error.strerror or error}: {error.filename}); give a path "
            f"in a folder you can write to."
        ) from None


def _check_exported_codes(
    out: Path, fmt: str, encoder: torch.nn.Module, images: torch.Tensor, console: Console
) -> None:
    """The exported codes of a batch against pack_codes of PyTorch's embeddings (:func:`check_codes`)."""
    wrong = check_codes(out, fmt, encoder, images)
    if wrong is None:
        return
    if wrong:
        raise UserError(
            f"the exported model's codes differ from pack_codes of PyTorch's embeddings for {wrong} of {len(images)} "
            f"images; the export is not faithful, please report it with the checkpoint's head config."
        )
    console.print(f"check: the codes of a batch of {len(images)} equal pack_codes of PyTorch's embeddings")


def export_folder(cfg: DictConfig) -> Path:
    """``format=hf``: the model folder (:func:`simlearn.inference.model_folder.write_model_folder`) with its model card
    (:func:`simlearn.export.card.model_card`), checked by loading it back and comparing its embeddings with the
    checkpoint's, then pushed to the Hub when ``push_to_hub=REPO_ID`` (:func:`simlearn.export.hub.push_to_hub`)."""
    from simlearn.export.card import model_card, run_info
    from simlearn.export.hub import check_repo_id, push_to_hub
    from simlearn.inference.model_folder import check_out, write_model_folder

    repo_id = cfg.get("push_to_hub")
    if repo_id:
        check_repo_id(str(repo_id))  # a malformed id fails before anything is written
    out = Path(cfg.get("out") or Path(cfg.paths.output_dir) / FORMATS["hf"]).expanduser()
    overwrite = bool(cfg.get("overwrite"))
    check_out(out, overwrite)  # a folder that would be refused fails before the checkpoint is read
    model = load_model(cfg.ckpt_path)
    info = run_info(Path(cfg.ckpt_path), cfg.get("metrics"))
    parameters = sum(p.numel() for p in model.encoder.parameters())
    card = model_card(model, info, None, cfg.get("license"), parameters)
    folder = write_model_folder(model, out, card, overwrite)
    console = Console()
    console.print(f"wrote the model folder {folder} (model.safetensors, config.json, preprocessing.json, README.md)")
    if cfg.get("check", True):
        images = torch.randn(3, *model.input_shape, generator=torch.Generator().manual_seed(0))
        difference = float(np.abs(load_model(folder).embed_tensor(images) - model.embed_tensor(images)).max())
        if difference > 1e-6:
            raise UserError(
                f"the model folder's embeddings differ from the checkpoint's by up to {difference:.2e}; the export is "
                f"not faithful, please report it with the checkpoint's backbone config."
            )
        console.print(f"check: simlearn.load({str(folder)!r}) embeds like the checkpoint (max |Δ| = {difference:.1e})")
        if encoder_code_bits(model.encoder) is not None:  # the codes, too: a sign flip near 0 hides in |Δ|
            same = pack_codes(load_model(folder).embed_tensor(images)) == pack_codes(model.embed_tensor(images))
            if not same.all():
                raise UserError(
                    "the model folder's codes differ from the checkpoint's; the export is not faithful, please "
                    "report it with the checkpoint's head config."
                )
            console.print("check: its codes equal the checkpoint's")
    if repo_id:
        url = push_to_hub(folder, str(repo_id), bool(cfg.get("hub_private", True)))
        console.print(f"pushed to {url}", highlight=False)
    return folder
