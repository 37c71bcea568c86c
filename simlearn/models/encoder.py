"""The encoder users keep after training: image → embedding."""

from __future__ import annotations

from torch import Tensor, nn


class Encoder(nn.Module):
    """Backbone followed by a projection head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def embedding_dim(self) -> int:
        return self.head.out_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))
