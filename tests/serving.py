"""Shared by the serve tests (tests/test_serve_*.py, tests/test_retrieval_gallery.py): digit galleries as PNG
files (and as image_csv data with a planted leak, for the organise and leak-check tests), simlearn-serve's config,
a live uvicorn server, a float64 brute force, HTTP helpers."""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from simlearn.config import compose_config
from simlearn.serve.server import bind, make_server, run_server

TOKEN = "test-token-0123456789abcdef"


PER_CLASS = 10


def write_digit_gallery(folder: Path, per_class: int = PER_CLASS, offset: int = 0) -> list[Path]:
    """scikit-learn's 8×8 digits as PNG files, ``folder/<digit>/<row>.png``: ``per_class`` of each digit, starting
    at the ``offset``-th image of that digit (so that two calls with other offsets share no image)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    written = []
    for digit in range(10):
        rows = np.flatnonzero(digits.target == digit)[offset : offset + per_class]
        for row in rows:
            path = folder / str(digit) / f"{row}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[row] * 255 / 16).round().astype(np.uint8)).save(path)
            written.append(path)
    return written


def planted_image_csv(root: Path, per_class: int, splits: dict[int, str], brightness: float) -> tuple[Path, Path, Path]:
    """image_csv data of digit PNGs (each digit's i-th file in ``splits[i]``, the others in train) and a test file
    that is a ``brightness`` times brighter copy of the first training file, under another name
    (``uploads/IMG_0001.png``): the CSV, the training file, the copy."""
    files = write_digit_gallery(root, per_class=per_class)
    rows = [(f.relative_to(root), f.parent.name, splits.get(i % per_class, "train")) for i, f in enumerate(files)]
    source = next(path for path, _, split in rows if split == "train")
    pixels = np.asarray(Image.open(root / source), dtype=np.float64)
    copy = Path("uploads") / "IMG_0001.png"
    (root / copy).parent.mkdir()
    Image.fromarray(np.clip(pixels * brightness, 0, 255).round().astype(np.uint8)).save(root / copy)
    rows.append((copy, source.parent.name, "test"))
    table = root / "images.csv"
    with table.open("w", newline="") as file:
        csv.writer(file).writerows([("path", "label", "split"), *rows])
    return table, root / source, root / copy


def serve_config(ckpt: Path | None, gallery: Path | str | None, cache_dir: Path, *overrides: str):
    """simlearn-serve's config for ``ckpt`` (None: give run_dir= in ``overrides``) and ``gallery`` (None: the
    default, the checkpoint's test split)."""
    given = [f"ckpt_path={ckpt}"] if ckpt is not None else []
    given += [f"gallery={gallery}"] if gallery is not None else []
    return compose_config(
        [*given, f"cache_dir={cache_dir}", "device=cpu", *overrides],
        config_name="serve",
        output_dir=cache_dir.parent / "run",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout: float = 20.0) -> Iterator[str]:
    """``app`` served by a real uvicorn in a thread on 127.0.0.1 (a free port); yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = make_server(app, shutdown_timeout=2)
    thread = threading.Thread(target=run_server, args=(server, sock), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + timeout
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the uvicorn server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        assert not thread.is_alive(), "the uvicorn server did not stop"


def brute_force(gallery: np.ndarray, query: np.ndarray, k: int, exclude: int | None = None):
    """The reference: float64 cosines, most similar first, ties to the lower index."""
    g = gallery.astype(np.float64)
    q = query.astype(np.float64)
    cos = g @ q / (np.linalg.norm(g, axis=1) * np.linalg.norm(q))
    order = [i for i in np.lexsort((np.arange(len(g)), -cos)) if i != exclude][:k]
    return [int(i) for i in order], cos[order]


def one_line_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and len(detail) < 400, detail
    return detail


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(path: Path, **fields) -> dict:
    return {"files": {"image": (path.name, path.read_bytes(), "image/png")}, "data": fields}
