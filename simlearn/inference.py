"""Running a trained encoder outside the training loop: the device to use, and the embeddings of a loader."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from simlearn.errors import UserError
from simlearn.models.module import EmbeddingSet


@torch.no_grad()
def embed(
    encoder: nn.Module, batches: Iterable[Mapping[str, Tensor]], device: torch.device | str | None = None
) -> EmbeddingSet:
    """Embeddings and label fields of every batch (``{"image", "index", <fields>}``), in order, in eval mode."""
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    parts: dict[str, list[Tensor]] = defaultdict(list)
    for batch in batches:
        parts["embeddings"].append(encoder(batch["image"].to(device)).float().cpu())
        for key, value in batch.items():
            if key != "image":
                parts[key].append(value.cpu())
    encoder.train(was_training)
    arrays = {key: torch.cat(values).numpy() for key, values in parts.items()}
    embeddings, index = arrays.pop("embeddings"), arrays.pop("index")
    return EmbeddingSet(embeddings=embeddings, fields=arrays, index=index)


def pick_device(device: str | None) -> torch.device:
    """``auto``/None: the GPU when PyTorch sees one, else the CPU; otherwise the named device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} asks for a GPU, but PyTorch sees none; use device=auto or device=cpu.")
    return torch.device(device)
