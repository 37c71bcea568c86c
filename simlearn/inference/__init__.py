"""Using a trained model: the one inference model (:mod:`simlearn.inference.model`: an encoder with its
preprocessing, from a checkpoint or a model folder, embedding files, PIL images and arrays), the shareable model
folder (:mod:`simlearn.inference.model_folder`), embedding a dataset's splits into files
(:mod:`simlearn.inference.embedding_files`,
``simlearn-embed``) and searching a gallery with query images (:mod:`simlearn.inference.search`, ``simlearn-search``).
Finding neighbours itself is :mod:`simlearn.retrieval`'s job; exporting to other formats is :mod:`simlearn.export`'s."""

from simlearn.inference.model import EmbeddedFiles, InferenceModel, embed, load_model, pick_device, weights_digest

__all__ = ["EmbeddedFiles", "InferenceModel", "embed", "load_model", "pick_device", "weights_digest"]
