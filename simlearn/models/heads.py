"""Projection heads: backbone features → L2-normalised embeddings."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from simlearn.errors import UserError


class ProjectionHead(nn.Module):
    """Linear (or 2-layer MLP when ``hidden_dim`` is set) projection to ``out_dim``, then L2 normalisation.

    Unit-length embeddings make the dot product a cosine similarity; ``out_dim=2`` puts them on a circle.
    """

    def __init__(self, in_features: int, out_dim: int, hidden_dim: int | None = None, normalize: bool = True) -> None:
        super().__init__()
        if not isinstance(out_dim, int) or isinstance(out_dim, bool) or out_dim < 1:
            raise UserError(f"head.out_dim must be an integer ≥ 1 (the embedding dimension), got {out_dim!r}.")
        if hidden_dim is not None and (not isinstance(hidden_dim, int) or hidden_dim < 1):
            raise UserError(f"head.hidden_dim must be null or an integer ≥ 1, got {hidden_dim!r}.")
        if hidden_dim is None:
            self.projection: nn.Module = nn.Linear(in_features, out_dim)
        else:
            self.projection = nn.Sequential(
                nn.Linear(in_features, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(True),
                nn.Linear(hidden_dim, out_dim),
            )
        self.out_dim = out_dim
        self.normalize = normalize

    def forward(self, features: Tensor) -> Tensor:
        embeddings = self.projection(features)
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings
