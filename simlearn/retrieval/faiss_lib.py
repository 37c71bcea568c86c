"""simlearn's one import of faiss (an optional dependency): whether it can be imported, and the import itself
without the loader's misleading lines."""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from typing import Any

from simlearn.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["faiss_installed", "faiss_reason", "import_faiss"]


@functools.cache
def faiss_installed() -> bool:
    """Whether faiss can be imported (tried once per process, quietly): a package that is present but broken (a
    missing shared library, a numpy it was not built for) counts as absent, so that the automatic choices (search
    backend, k-means) fall back to torch and scikit-learn instead of failing."""
    if importlib.util.find_spec("faiss") is None:
        return False
    try:
        import_faiss()
    except UserError as error:
        log.warning("faiss is installed but cannot be imported (%s); searching and clustering without it", error)
        return False
    return True


def import_faiss() -> Any:
    """simlearn's one import of faiss: without the loader's lines ("Could not load library with AVX512 support due
    to: ModuleNotFoundError …"), which read as errors when nothing is wrong. A :class:`UserError` when it cannot be
    imported."""
    try:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        import faiss
    except ImportError as error:
        raise UserError(
            f"backend='faiss' needs the faiss package, which cannot be imported ({error}); install it with "
            "`pip install faiss-cpu` (or `pip install simlearn[faiss]`), or use backend='torch' or 'auto'."
        ) from error
    return faiss


def faiss_reason(error: BaseException, limit: int = 200) -> str:
    """What a faiss ``RuntimeError`` says, without its C++ location: ``Error in void faiss::Clustering::train_encoded(
    …) at /project/faiss/Clustering.cpp:66: Error: 'nx >= k' failed: Number of training points (160) should be at
    least as large as number of clusters (1024)`` becomes the last sentence, short enough for one line."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)  # where in faiss's C++
    text = re.sub(r"^Error: '.*?' failed: ", "", text)  # the assertion's code
    return text if len(text) <= limit else text[: limit - 1] + "…"
