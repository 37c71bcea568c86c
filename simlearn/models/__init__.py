"""Backbones, projection heads, the encoder and the LightningModule that trains it."""

from simlearn.models.backbones import Backbone, SmallCNN
from simlearn.models.encoder import Encoder
from simlearn.models.heads import HashHead, ProjectionHead
from simlearn.models.module import EmbeddingModule, EmbeddingSet

__all__ = ["Backbone", "EmbeddingModule", "EmbeddingSet", "Encoder", "HashHead", "ProjectionHead", "SmallCNN"]
