"""Projection heads: backbone features → L2-normalised embeddings, or the relaxed binary codes of a hashing head."""

from __future__ import annotations

import torch
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


class IdentityHead(nn.Module):
    """The backbone's features themselves, L2-normalised: no parameters, ``out_dim`` = the backbone's
    ``out_features``. What a pretrained backbone's zero-shot retrieval is measured with (``head=identity``
    ``train=false``); trainable only through the backbone."""

    def __init__(self, in_features: int, out_dim: int | None = None) -> None:
        super().__init__()
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise UserError(f"head=identity needs the backbone's out_features as an integer ≥ 1, got {in_features!r}.")
        # out_dim only states the size for configs that read ${head.out_dim} (a softmax loss's embedding_size)
        if out_dim is not None and out_dim != in_features:
            raise UserError(
                f"head=identity keeps the backbone's {in_features} features, but head.out_dim={out_dim}; set "
                f"head.out_dim={in_features} (or null), or use head=projection to project to {out_dim}."
            )
        self.out_dim = in_features

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features.flatten(1), dim=1)


#: head.relaxation values of a hashing head
RELAXATIONS = ("tanh", "ste")


class HashHead(nn.Module):
    """A hashing head: a linear (or 2-layer MLP) projection to ``bits`` values squashed by tanh, the continuous
    relaxation of a binary code that the losses train; the code is its sign pattern (bit j = value j > 0, exactly
    ±1 / {0,1}: :func:`simlearn.retrieval.codes.pack_codes`), which evaluation and ``simlearn-embed`` use.

    ``quantization`` weights the term that pulls the relaxation to ±1, ``mean((|u| - 1)^2)`` (as in CSQ, Yuan et al.
    CVPR 2020, and DPSH-style methods), added to whatever loss trains the model (:meth:`quantization_loss`); 0: off.
    ``out_dim`` only states the size for configs that read ``${head.out_dim}``: it must equal ``bits``.

    ``relaxation``: ``tanh`` (the default) trains on ``u = tanh(z)``; ``ste`` trains on the code itself, the sign of
    ``u`` (+1 where u > 0, else -1, as :func:`~simlearn.retrieval.codes.pack_codes` reads it) with the
    straight-through estimator: the forward pass is exactly ±1, the backward pass tanh's gradient (Bengio et al. 2013;
    GreedyHash, Su et al. NeurIPS 2018, trains codes this way). Out of training (evaluation, ``simlearn-embed``, the
    exports) both give ``u``: the same signs, hence the same codes, and a float relaxation left to re-rank with. Under
    ``ste`` the quantization term is 0 (the outputs are ±1 already), and a loss that clamps its input short of ±1
    (``loss=csq``'s probabilities) gets no gradient from it: use ``ste`` with losses on similarities."""

    def __init__(
        self,
        in_features: int,
        bits: int = 64,  # as configs/head/hash.yaml; also the example a config mistake's message shows
        hidden_dim: int | None = None,
        quantization: float = 0.1,
        out_dim: int | None = None,
        relaxation: str = "tanh",
    ) -> None:
        super().__init__()
        from simlearn.retrieval.codes import check_bits  # the one rule for bit counts; a leaf module

        bits = check_bits(bits, "head.bits")
        if out_dim is not None and out_dim != bits:
            raise UserError(f"head=hash produces head.bits={bits} values, but head.out_dim={out_dim}; leave it null.")
        if isinstance(quantization, bool) or not isinstance(quantization, int | float) or quantization < 0:
            raise UserError(f"head.quantization must be a number ≥ 0 (0: off), got {quantization!r}; e.g. 0.1.")
        if relaxation not in RELAXATIONS:
            raise UserError(
                f"head.relaxation={relaxation!r} is not a relaxation of the code; valid: {list(RELAXATIONS)} (tanh: "
                f"train on tanh values; ste: on the ±1 signs with a straight-through gradient)."
            )
        self.relaxation = ProjectionHead(in_features, bits, hidden_dim, normalize=False)
        self.out_dim = bits
        #: marks an encoder whose embeddings are codes: evaluation ranks by Hamming distance, outputs hold codes
        self.code_bits = bits
        self.quantization = float(quantization)
        #: ``tanh`` or ``ste`` (class doc); not ``self.relaxation``, the projection, whose name the checkpoints keep
        self.relaxation_type = relaxation

    def forward(self, features: Tensor) -> Tensor:
        u = torch.tanh(self.relaxation(features))
        if self.relaxation_type == "ste" and self.training:
            # straight through: the value of the sign, the gradient of u
            return u + (torch.where(u > 0, 1.0, -1.0).to(u.dtype) - u).detach()
        return u

    def quantization_loss(self, embeddings: Tensor) -> Tensor:
        """The weighted quantization term of a batch of relaxed codes: ``quantization * mean((|u| - 1)^2)``."""
        return self.quantization * (embeddings.abs() - 1).pow(2).mean()
