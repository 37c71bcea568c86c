"""simlearn: metric learning for image similarity (Hydra configs, Lightning training, exact retrieval metrics)."""

__version__ = "0.1.0"
