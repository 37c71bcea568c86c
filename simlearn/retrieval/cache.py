"""One fingerprinted, atomic cache of embeddings: what a gallery's embeddings are keyed by (the model, the files or
the data), and npz files written so that an interruption never leaves a half-written one and a stale or damaged
one is rebuilt rather than misread. Used by the folder galleries (:mod:`simlearn.retrieval.gallery`) and the
split galleries of the service (:mod:`simlearn.serve.split_gallery`)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["CACHE_VERSION", "atomic_write", "file_stats", "fingerprint", "load_fingerprinted", "save_fingerprinted"]

#: Bumped when the cache file layout changes, so that old caches are rebuilt rather than misread.
CACHE_VERSION = 1


def file_stats(files: Sequence[Path], root: Path | None = None) -> list[tuple[str, int, int]]:
    """What a cache of embedded files is keyed by (with the model): each file's name (relative to ``root``), size and
    modification time, so that a file changed, added, removed or renamed makes the cache stale; a file that is gone
    counts as size and time -1."""
    stats = []
    for path in files:
        try:
            stat = Path(path).stat()
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        stats.append((str(Path(path).relative_to(root)) if root is not None else str(path), size, mtime))
    return stats


def fingerprint(*parts: Any) -> str:
    """A digest of ``parts`` (arrays by their dtype, shape and bytes; anything else by its text): what a cache file
    is written for."""
    digest = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(f"{part.dtype.str}{part.shape}".encode())
            digest.update(memoryview(np.ascontiguousarray(part)))
        else:
            digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(file)`` into a temporary file beside ``path`` (one per process: two writers never mix), then renamed
    over it: an interruption never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_fingerprinted(
    path: Path, fingerprint: str, keys: Sequence[str] | None, what: str
) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` (None: all of them) of an npz cache file written for ``fingerprint``; None when it is
    absent, was written for other files or another model, or cannot be read (a file cut short by an interruption,
    a key it lacks: logged, then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "fingerprint" not in arrays.files or str(arrays["fingerprint"]) != fingerprint:
                return None
            return {key: arrays[key] for key in (arrays.files if keys is None else keys)}
    except Exception as error:
        log.warning("embedding again: the %s %s cannot be read (%s)", what, path, error)
        return None


def save_fingerprinted(path: Path, fingerprint: str, what: str, **arrays: np.ndarray) -> None:
    """Write an npz cache file for ``fingerprint`` atomically (:func:`atomic_write`); a folder that cannot be
    written only costs embedding again next time (logged)."""
    try:
        atomic_write(path, lambda file: np.savez(file, fingerprint=np.array(fingerprint), **arrays))
    except OSError as error:
        log.warning("could not save the %s in %s (%s)", what, path, error)
