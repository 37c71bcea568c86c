"""Small generated photo datasets on disk (JPEG files in class folders, CSVs), for the image-file data tests."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = [(200, 60, 40), (40, 160, 60), (50, 70, 200), (220, 200, 40), (150, 60, 170), (90, 90, 90)]


def write_photo(path: Path, colour: Sequence[int], rng: np.random.Generator, size: int = 40) -> Path:
    """A noisy JPEG of one colour with a lighter square at a random place (so no two files are the same)."""
    image = np.array(colour, dtype=np.float64) + rng.normal(0, 18, (size, size, 3))
    x, y = rng.integers(0, size // 2, 2)
    image[y : y + size // 3, x : x + size // 3] += 50
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def class_folders(
    root: Path, counts: Mapping[str, int], seed: int = 0, size: int = 40, awa2_names: bool = False
) -> dict[str, list[Path]]:
    """``root/<class>/<files>`` with ``counts[class]`` JPEGs each, every class its own colour."""
    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for c, (name, count) in enumerate(counts.items()):
        files[name] = [
            write_photo(
                root / name / (f"{name}_{10001 + i}.jpg" if awa2_names else f"{i:03d}.jpg"), PALETTE[c], rng, size
            )
            for i in range(count)
        ]
    return files


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def distinct_pairs(files: Mapping[str, Sequence[Path]], count: int) -> list[tuple[Path, Path, int]]:
    """``count`` pairs ``(a, b, similar)`` of the files, alternately similar (same class: 1) and dissimilar (0),
    every class in turn, no pair twice in either order (pair data drops repeats, which would change the count)."""
    per_class = [list(itertools.combinations(paths, 2)) for paths in files.values()]
    similar = [pair for turn in itertools.zip_longest(*per_class) for pair in turn if pair is not None]
    smallest = min(len(paths) for paths in files.values())
    dissimilar = [
        (files[c][i], files[d][(5 * i + 3) % smallest])
        for i in range(smallest)
        for c, d in itertools.combinations(files, 2)
    ]
    pairs = [(a, b, 1 - kind) for both in zip(similar, dissimilar, strict=False) for kind, (a, b) in enumerate(both)]
    if len(pairs) < count:
        raise ValueError(f"only {len(pairs)} distinct pairs of these files, {count} wanted")
    return pairs[:count]
