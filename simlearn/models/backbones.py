"""Feature extractors: images (B, C, H, W) → features (B, out_features)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from simlearn.errors import UserError


class SmallCNN(nn.Module):
    """A VGG-style stack of conv-BN-ReLU blocks for small images (8×8 digits, 28×28 MNIST).

    Each block but the last halves the resolution while it is still at least 4 pixels, so the same config works
    for any input size; global average pooling then gives ``out_features = widths[-1]``.
    """

    def __init__(
        self, in_channels: int, image_size: int, widths: Sequence[int] = (32, 64, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_channels < 1 or image_size < 1:
            raise UserError(
                f"backbone small_cnn needs positive in_channels and image_size, got {in_channels} and {image_size}."
            )
        if not widths or any(w < 1 for w in widths):
            raise UserError(f"backbone.widths must be a non-empty list of positive ints, got {list(widths)}.")
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(True),
            ]
            if i < len(widths) - 1 and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)
