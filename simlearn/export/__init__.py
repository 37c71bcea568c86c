"""Exporting a trained encoder: ``simlearn-export ckpt_path=PATH format=onnx|torchscript|hf [out=PATH]``.

One module per output: :mod:`.formats` (ONNX and TorchScript files, with a sidecar ``<out>.json`` of the
preprocessing), the model folder of ``format=hf`` (written by :mod:`simlearn.inference.model_folder`, which also
reads it) with its model card (:mod:`.card`) and the Hub push (:mod:`.hub`); :mod:`.command` is the command itself.
"""

from simlearn.export.command import export, export_folder
from simlearn.export.formats import FORMATS, check_export, export_encoder, export_onnx, export_torchscript, run_exported

__all__ = [
    "FORMATS",
    "check_export",
    "export",
    "export_encoder",
    "export_folder",
    "export_onnx",
    "export_torchscript",
    "run_exported",
]
