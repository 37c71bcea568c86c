"""Autoencoding: a decoder from the embedding back to the image, trained with MSE against the input image."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.nn import functional as F

from simlearn.errors import UserError
from simlearn.losses.tasks import Task


class ReconstructionTask(Task):
    """Decode the embedding into a ``channels × image_size × image_size`` image; loss = MSE to ``batch["image"]``.

    The encoder is then the encoder half of an autoencoder whose bottleneck is the embedding. The target is the
    batch's image as the model sees it (normalised with the training split's mean and std), so the decoder ends in
    a linear layer. The decoder is a linear map to ``widths[0]`` feature maps of ``ceil(image_size / 4)`` pixels,
    then two ×2 transposed convolutions (28 → 7 → 14 → 28; 8 → 2 → 4 → 8), cropped to ``image_size``.
    """

    reads_image = True

    def __init__(
        self,
        embedding_dim: int,
        channels: int,
        image_size: int,
        widths: tuple[int, int] | list[int] = (64, 32),
        weight: float = 1.0,
        field: str = "image",
    ) -> None:
        super().__init__(field, weight)
        if embedding_dim < 1 or channels < 1 or image_size < 4:
            raise UserError(
                f"reconstruction needs embedding_dim ≥ 1, channels ≥ 1 and image_size ≥ 4, got {embedding_dim}, "
                f"{channels} and {image_size}."
            )
        if len(widths) != 2 or any(w < 1 for w in widths):
            raise UserError(f"reconstruction widths must be two positive ints, got {list(widths)}.")
        self.channels = channels
        self.image_size = image_size
        self.start = -(-image_size // 4)
        first, second = widths
        self.project = nn.Sequential(nn.Linear(embedding_dim, first * self.start**2), nn.ReLU(True))
        self.decoder = nn.Sequential(
            nn.Unflatten(1, (first, self.start, self.start)),
            nn.ConvTranspose2d(first, second, 4, stride=2, padding=1),
            nn.BatchNorm2d(second),
            nn.ReLU(True),
            nn.ConvTranspose2d(second, channels, 4, stride=2, padding=1),
        )

    def decode(self, embeddings: Tensor) -> Tensor:
        """Images (B, channels, image_size, image_size) reconstructed from embeddings (B, embedding_dim)."""
        images = self.decoder(self.project(embeddings))
        return images[..., : self.image_size, : self.image_size]

    def forward(self, embeddings: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
        return F.mse_loss(self.decode(embeddings), batch["image"])
