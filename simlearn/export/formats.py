"""The encoder as a file for other runtimes: ONNX and TorchScript, and the check that it embeds as PyTorch does.

The exported model takes the preprocessed image batch ``image`` (N, C, H, W), any N, and
returns the unit-length embeddings ``embedding`` (N, d). ``<out>.json`` next to it says how to preprocess images
(image_size, channels, mean, std: resize, scale to [0, 1], normalise) and the embedding dimension, so it can be used
without simlearn.

A hashing model (``head=hash``) exported to ONNX has a second output ``codes`` (N, bits / 8) uint8: the packed
binary codes, bit j = embedding j > 0, most significant bit first, byte for byte what
:func:`simlearn.retrieval.codes.pack_codes` gives (:class:`CodeOutputs` packs them inside the graph), so a runtime
without simlearn gets the codes its Hamming search needs; its ``embedding`` is the tanh relaxation (not unit-length).
Exported to TorchScript it keeps one output (``module(image)`` is the embedding, as a float model's) and has a second
exported method, ``module.codes(image)``: the same packed codes (:class:`CodeMethod`). The command checks the codes
of either against ``pack_codes`` of PyTorch's embeddings (:func:`check_codes`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from simlearn.errors import UserError
from simlearn.retrieval.codes import encoder_code_bits, pack_codes

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "CodeMethod",
    "CodeOutputs",
    "check_codes",
    "check_export",
    "export_encoder",
    "export_onnx",
    "export_torchscript",
    "exported_codes",
    "run_exported",
]

#: format → default file (or folder) name
FORMATS = {"onnx": "encoder.onnx", "torchscript": "encoder.pt", "hf": "model"}
#: largest |exported − PyTorch| embedding difference the check accepts
TOLERANCE = 1e-4


class CodeOutputs(nn.Module):
    """A hashing encoder with its packed codes as a second output: ``(embedding, codes)``, the codes (N, bits / 8)
    uint8 as :func:`simlearn.retrieval.codes.pack_codes` packs them (bit j = embedding j > 0, the first of each 8 the
    most significant). Packed by a weighted sum of each byte's 8 bits, as ONNX has no packbits operator."""

    def __init__(self, encoder: nn.Module, bits: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.bits = bits
        self.register_buffer("weights", 2 ** torch.arange(7, -1, -1, dtype=torch.int32), persistent=False)

    def pack(self, embedding: torch.Tensor) -> torch.Tensor:
        """The packed codes (N, bits / 8) uint8 of embeddings (N, bits)."""
        bits = (embedding > 0).to(torch.int32).reshape(embedding.shape[0], self.bits // 8, 8)
        return (bits * self.weights).sum(dim=-1).to(torch.uint8)

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        """The packed codes of a preprocessed image batch."""
        return self.pack(self.encoder(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.encoder(images)
        return embedding, self.pack(embedding)


class CodeMethod(CodeOutputs):
    """A hashing encoder for TorchScript: ``forward`` is the embedding alone (one output, as for a float model, so
    any caller of ``module(image)`` is unchanged) and ``codes(image)`` a second traced method, the packed codes."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.encoder(images)


def _export_extra() -> str:
    return "pip install 'simlearn[export]' (onnx, onnxscript, onnxruntime)"


def export_onnx(encoder: nn.Module, example: torch.Tensor, path: Path, opset: int | None = None) -> Path:
    """ONNX with a dynamic batch dimension, through torch.export (needs onnx and onnxscript); a hashing encoder's
    graph has the second output ``codes`` (:class:`CodeOutputs`)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"format=onnx needs the onnx and onnxscript packages ({error}); {_export_extra()}.") from error
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    bits = encoder_code_bits(encoder)
    module, outputs = (encoder, ["embedding"]) if bits is None else (CodeOutputs(encoder, bits), ["embedding", "codes"])
    batch = torch.export.Dim("batch", min=1)
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # their INFO lines about graph passes are noise here
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["image"],
            output_names=outputs,
            dynamic_shapes={"images": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    return path


def export_torchscript(encoder: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """TorchScript by tracing (the encoder has no data-dependent control flow, so any batch size works); a hashing
    encoder's module also has the traced method ``codes(image)`` (:class:`CodeMethod`)."""
    bits = encoder_code_bits(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # torch.jit is deprecated upstream
        if bits is None:
            traced = torch.jit.trace(encoder, example, check_trace=False)
        else:
            methods = {"forward": (example,), "codes": (example,)}
            traced = torch.jit.trace_module(CodeMethod(encoder, bits), methods, check_trace=False)
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


def exported_codes(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray | None:
    """The packed codes of ``images`` by an exported hashing model: TorchScript's ``codes`` method, the ONNX graph's
    ``codes`` output (None when onnxruntime is not installed)."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            model = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return model.codes(images).numpy()
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["codes"], {"image": images.numpy()})[0]


def check_codes(path: Path, fmt: str, encoder: nn.Module, images: torch.Tensor) -> int | None:
    """How many of ``images``' exported codes differ from ``pack_codes`` of PyTorch's embeddings, counting only bits
    whose embedding value is farther than :data:`TOLERANCE` from 0 (nearer, the two runtimes' rounding may take
    either side); None when the export cannot be run here."""
    codes = exported_codes(path, fmt, images)
    if codes is None:
        return None
    with torch.no_grad():
        expected = encoder.eval().cpu()(images).numpy()
    if codes.dtype != np.uint8 or codes.shape != (len(images), expected.shape[1] // 8):
        raise UserError(f"the exported model's codes are {codes.dtype} {codes.shape}, expected uint8 packed codes.")
    differ = np.unpackbits(codes, axis=1) != np.unpackbits(pack_codes(expected), axis=1)
    return int((differ & (np.abs(expected) > TOLERANCE)).any(axis=1).sum())


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
