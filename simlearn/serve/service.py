"""What the search service knows and does, without HTTP: the model, the gallery, searches and the gallery's map.

Every search goes through :func:`simlearn.retrieval.exact.top_k` (exact: float64 cosines, ties to the lower
gallery index), through the gallery's faiss index for galleries of ``faiss_threshold`` items or more, as
``simlearn-search`` does, and a code gallery (a ``head=hash`` model's) by Hamming distance through its code index,
optionally re-ranked by floats (``code_index``, ``rerank``). Items are named by their row in the gallery (``id`` 0 …
N-1) and nothing else: a client never names a file.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from PIL import Image

from simlearn.data.images import DECODE_ERRORS, is_image_name
from simlearn.errors import UserError
from simlearn.inference import InferenceModel, load_model, pick_device
from simlearn.organise.clusters import NOISE
from simlearn.organise.command import Organised
from simlearn.retrieval.candidates import CandidateSource
from simlearn.retrieval.codes import check_code_search
from simlearn.retrieval.gallery import (
    Gallery,
    load_gallery,
    non_finite_rows,
    postprocessed_method,
    search_gallery,
    search_index,
)
from simlearn.retrieval.inputs import prepare_gallery
from simlearn.retrieval.postprocess import PostProcessor, postprocessors
from simlearn.retrieval.result import result_row
from simlearn.serve.split_gallery import ItemImages, gallery_split, split_gallery
from simlearn.serve.views import GalleryViews, MapOptions, organise_options

log = logging.getLogger(__name__)

__all__ = [
    "BadRequest",
    "Busy",
    "NotFound",
    "SearchService",
    "ServiceLimits",
    "TooLarge",
    "checkpoint_path",
    "open_service",
]

#: the items of each cluster shown in GET /clusters (nearest its centre first), as thumbnails on the page
PREVIEW = 6
#: The image formats an upload may have: decoded by Pillow itself (never by an outside program, as EPS would be).
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")


class BadRequest(UserError):
    """A request the service refuses (HTTP 4xx): the message is one line that says what was wrong and what is valid."""

    status = 400


class NotFound(BadRequest):
    """A request for something the service does not have (HTTP 404)."""

    status = 404


class TooLarge(BadRequest):
    """An upload over the size limit (HTTP 413)."""

    status = 413


class NotAnImage(BadRequest):
    """An upload that does not decode as an image (HTTP 415)."""

    status = 415


class Busy(BadRequest):
    """An upload refused because as many as the service decodes at once are decoding and its queue is full (HTTP 503,
    with ``Retry-After``)."""

    status = 503
    headers = {"Retry-After": "2"}


def _shown(value: Any, limit: int) -> str:
    """A client's value as the client wrote it: a string quoted, anything else as JSON (``true``, not ``True``)."""
    if isinstance(value, str):
        text = value.strip()
        return repr(text if len(text) <= limit else text[:limit] + "…")
    if hasattr(value, "filename") and hasattr(value, "read"):  # a form field sent as a file
        return "a file"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):  # RecursionError: arrays nested hundreds deep
        text = "a value nested too deeply" if isinstance(value, list | dict) else "a value that is not JSON"
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class ServiceLimits:
    """What a client may ask for: the default and largest ``k`` (also the largest page of a cluster's items or of
    duplicate groups), the largest upload."""

    k: int = 10
    max_k: int = 100
    max_upload_mb: float = 10.0
    #: a small file can hold a huge image (a blank PNG of 20000 × 20000 pixels has a few hundred KB): decoding
    #: one would take gigabytes, so images are refused by their size in pixels before they are decoded
    max_image_megapixels: float = 50.0
    #: uploads decoded at the same time: decoding holds the whole image in memory (a 50-megapixel RGB image is
    #: 200 MB in Pillow, 4 bytes a pixel), so this bounds the memory that uploads can take
    max_decodes: int = 2
    #: uploads that may wait for a decode; one more is refused (HTTP 503) before its file is read into memory
    max_waiting_uploads: int = 8

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class SearchService:
    """A trained encoder and a gallery, searched on request; safe to call from many threads at once.

    The model runs on ``device`` (one forward pass at a time: concurrent requests queue for it, and the searches
    themselves run in parallel); the gallery's embeddings are kept on that device too when it is a GPU.
    """

    def __init__(
        self,
        model: InferenceModel,
        gallery: Gallery,
        limits: ServiceLimits | None = None,
        index: CandidateSource | None = None,
        images: ItemImages | None = None,
        source: str | None = None,
        postprocess: Sequence[PostProcessor] = (),
        views: GalleryViews | None = None,
    ) -> None:
        self.model = model
        #: post-processing steps re-ranking every search (simlearn.retrieval.postprocess): exact, in memory
        self.postprocess = list(postprocess)
        self.gallery = gallery
        self.device = model.device
        self.limits = limits or ServiceLimits()
        self.index = index
        #: the images of items without files (a split of in-memory data), served as PNG
        self.images = images
        #: what the gallery is, for people (the page, the start message)
        self.source = source or gallery.source.name
        # on a GPU the gallery is searched where the queries are embedded (the exact search runs on the device of
        # its queries); with a faiss index, or on the CPU, it stays a numpy array
        # prepared once (checked, unit rows, norms): a search then costs no pass over the whole gallery
        self._searched = (
            prepare_gallery(gallery.embeddings, self.device)
            if self.device.type != "cpu" and index is None
            else gallery.searchable()
        )
        #: whether the service can send the items' images: rendered from their pixels, or image files (a folder; an
        #: npz or a split that names image files)
        self.has_images = images is not None or (
            gallery.paths is not None and any(is_image_name(Path(p)) for p in gallery.paths[:100])
        )
        self._model_lock = threading.Lock()
        self._decodes = threading.BoundedSemaphore(self.limits.max_decodes)
        self._admission = threading.Lock()
        self._admitted = 0
        #: the catalogue views (clusters, duplicate groups, the map), each computed on its first request
        self.views = views or GalleryViews(gallery)
        self.method = (
            postprocessed_method(self.postprocess)
            if self.postprocess
            else index.describe()
            if index is not None
            else "exact (float64 cosines, ties to the lower gallery index)"
        )

    # -- facts -----------------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.gallery.embeddings)

    def info(self) -> dict[str, Any]:
        """What the page shows about the service: the gallery, the model and the limits."""
        return {
            "gallery": {
                "source": self.source,
                "items": self.size,
                "dim": int(self.gallery.embeddings.shape[1]),
                "classes": sorted(self.gallery.classes),
                "has_images": self.has_images,
                "has_labels": self.gallery.labels is not None,
                "fields": sorted(self.gallery.fields),
                "skipped": self.gallery.skipped,
            },
            "model": {"checkpoint": self.model.path.name, "device": str(self.device)},
            "search": self.method,
            "k": min(self.limits.k, self.size),
            "max_k": self.max_k(),
            "max_upload_mb": self.limits.max_upload_mb,
        }

    def max_k(self, exclude_one: bool = False) -> int:
        return max(1, min(self.limits.max_k, self.size - int(exclude_one)))

    # -- checks ----------------------------------------------------------------------------------------------------
    def item(self, value: Any) -> int:
        """The gallery row that ``value`` names (an integer id, also given as text), or :class:`NotFound`."""
        if not isinstance(value, int | str) or isinstance(value, bool):  # JSON true, 2.5, [3], {…}, null
            raise BadRequest(
                f"id must be an integer from 0 to {self.size - 1} (each result's 'id'), got {_shown(value, 40)}."
            )
        text = str(value).strip()
        if not re.fullmatch(r"[0-9]{1,18}", text) or int(text) >= self.size:
            raise NotFound(
                f"no gallery item {_shown(value, 40)}: ids are the integers 0 to {self.size - 1} (each result's 'id')."
            )
        return int(text)

    def check_k(self, value: Any, exclude_one: bool = False) -> int:
        """``k`` as an int within 1 … :meth:`max_k` (the default when None or empty), or :class:`BadRequest`."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return min(self.limits.k, self.max_k(exclude_one))
        text = str(value).strip() if isinstance(value, int | str) else ""
        largest = self.max_k(exclude_one)
        if (
            not isinstance(value, int | str)
            or isinstance(value, bool)
            or not re.fullmatch(r"-?[0-9]{1,18}", text)
            or not 1 <= int(text) <= largest
        ):
            raise BadRequest(
                f"k must be an integer from 1 to {largest} (the gallery has {self.size} items, max_k="
                f"{self.limits.max_k}), got {_shown(value, 20)}."
            )
        return int(text)

    # -- embedding and searching -----------------------------------------------------------------------------------
    @contextmanager
    def upload_slot(self) -> Iterator[None]:
        """A place among the uploads being decoded or waiting for it, held for the whole upload, or :class:`Busy`
        when they are all taken (``max_decodes`` + ``max_waiting_uploads``): entered before the uploaded file is
        read into memory (the form parser keeps at most 1 MB of it in memory, the rest in a temporary file), so that
        a burst of uploads costs neither their files' memory nor a queue without end."""
        capacity = self.limits.max_decodes + self.limits.max_waiting_uploads
        with self._admission:
            if self._admitted >= capacity:
                raise Busy(
                    f"the service is busy: {capacity} uploads are being decoded or waiting (max_decodes="
                    f"{self.limits.max_decodes}, max_waiting_uploads={self.limits.max_waiting_uploads}); send it again "
                    f"in a few seconds."
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._admission:
                self._admitted -= 1

    def embed_image(self, data: bytes) -> np.ndarray:
        """The embedding (d,) of an uploaded image file, prepared as the checkpoint says; at most ``max_decodes``
        uploads are decoded at a time (the others wait)."""
        if not data:
            raise BadRequest("the uploaded image is empty (0 bytes); send an image file (png, jpg, …) as 'image'.")
        if len(data) > self.limits.max_upload_bytes:
            raise TooLarge(self.too_large_message(len(data)))
        try:
            with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as header:  # reads the header only
                width, height = header.size
        except Image.DecompressionBombError as error:  # Pillow's own limit, far above ours: too large, not broken
            raise TooLarge(self._too_many_pixels(_bomb_pixels(error))) from error
        except DECODE_ERRORS as error:
            raise self._not_an_image(error) from error
        if width * height > self.limits.max_image_megapixels * 1e6:
            raise TooLarge(self._too_many_pixels(width * height, f"{width} × {height} pixels"))
        try:
            with self._decodes:  # the allow-list holds for the body too
                image = self.model.loader(io.BytesIO(data), formats=UPLOAD_FORMATS)
        except DECODE_ERRORS as error:  # a header that promised an image, and a body that is none
            raise self._not_an_image(error) from error
        with self._model_lock, torch.inference_mode():
            vector = self.model.embed_tensor(image.unsqueeze(0))[0]
        if len(non_finite_rows(vector[None])):
            raise BadRequest("the model embeds this image to NaN or inf; its checkpoint is broken, try another model.")
        return vector

    @staticmethod
    def _not_an_image(error: BaseException) -> NotAnImage:
        return NotAnImage(
            "the upload is not an image that can be read (not a png, jpg, bmp, gif, webp or tiff file, or one cut "
            "short); send one of those as 'image'."
        )

    def _too_many_pixels(self, pixels: int | None, described: str | None = None) -> str:
        size = described or (f"{pixels / 1e6:.0f} million pixels" if pixels else "more pixels than Pillow decodes")
        return (
            f"the image has {size}, more than max_image_megapixels={self.limits.max_image_megapixels:g} million; "
            f"send a smaller image."
        )

    def too_large_message(self, size: int) -> str:
        return (
            f"the upload has {size / 2**20:.1f} MB, more than max_upload_mb={self.limits.max_upload_mb:g}; send a "
            f"smaller image (or start the service with a larger max_upload_mb)."
        )

    def search_vector(
        self, vector: np.ndarray, k: int, exclude: int | None = None, class_name: str | None = None
    ) -> list[dict[str, Any]]:
        """The ``k`` gallery items most similar to ``vector``, most similar first (``exclude``: a row left out, the
        query's own item); ``class_name``: the query's, to mark each result as of the same class or another."""
        query = torch.as_tensor(vector[None]).to(self.device) if self.device.type != "cpu" else vector[None]
        found = search_gallery(
            query,
            self.gallery,
            k,
            index=self.index,
            postprocess=self.postprocess,
            exclude=None if exclude is None else np.array([exclude]),
            searched=self._searched,
        )
        rows = zip(found.indices[0].tolist(), found.cosines[0].tolist(), strict=True)
        return [self.result(rank, int(i), float(c), class_name) for rank, (i, c) in enumerate(rows, start=1)]

    def result(self, rank: int, i: int, cos: float, query_class: str | None) -> dict[str, Any]:
        # the one result schema (simlearn.retrieval.result), plus the item's image URL and label fields; its path
        # is the name the gallery gives it (never a server's file system path)
        path = self.gallery.name(i) if self.gallery.paths is not None else None
        return {
            **result_row(rank, i, self.gallery.name(i), path, self.class_name(i), cos, query_class),
            "image": f"/items/{i}" if self.has_images else None,
            "fields": self.fields(i),
        }

    def class_name(self, i: int) -> str | None:
        return self.gallery.labels[i] if self.gallery.labels is not None else None

    def fields(self, i: int) -> dict[str, Any] | None:
        """Every label field of item ``i`` (e.g. digit, parity, magnitude: the values simlearn-embed wrote, the label
        field's value being the label's id), None for a gallery without them; a non-finite number is null."""
        if not self.gallery.fields:
            return None
        return {name: _json_value(values[i]) for name, values in sorted(self.gallery.fields.items())}

    def search_upload(self, data: bytes, k: Any = None, class_name: str | None = None) -> dict[str, Any]:
        """``POST /search`` with an image: its top k."""
        k = self.check_k(k)
        vector = self.embed_image(data)
        class_name = class_name or None
        return {
            "query": {"id": None, "class_name": class_name},
            "k": k,
            "search": self.method,
            "results": self.search_vector(vector, k, class_name=class_name),
        }

    def neighbours(self, item: Any, k: Any = None) -> dict[str, Any]:
        """The top k of a gallery item (itself left out): ``POST /search`` with an id, ``/items/{id}/neighbours``."""
        i = self.item(item)
        k = self.check_k(k, exclude_one=True)
        class_name = self.class_name(i)
        vector = self.gallery.embeddings[i]
        return {
            "query": {
                "id": i,
                "name": self.gallery.name(i),
                "class_name": class_name,
                "image": f"/items/{i}" if self.has_images else None,
                "fields": self.fields(i),
            },
            "k": k,
            "search": self.method,
            "results": self.search_vector(np.asarray(vector), k, exclude=i, class_name=class_name),
        }

    def item_image(self, item: Any) -> Path | bytes:
        """The image of a gallery item, looked up by id (never by a client path): one of the gallery's own files,
        or a PNG rendered from the item's pixels (items of in-memory data)."""
        i = self.item(item)
        if not self.has_images:
            raise NotFound(f"this gallery ({self.source}) holds embeddings without image files; items have no image.")
        if self.images is not None:
            return self.images.png(i)
        path = Path(self.gallery.paths[i])
        if not (is_image_name(path) and path.is_file()):
            raise NotFound(f"the image of item {i} ({self.gallery.name(i)}) is no longer there.")
        return path

    # -- the catalogue views -----------------------------------------------------------------------------------------
    def organised(self) -> Organised:
        """The gallery's organisation (computed on the first call, :class:`GalleryViews`); a gallery it cannot be
        computed for (e.g. a single item) is one line, HTTP 400."""
        try:
            return self.views.organised()
        except UserError as error:
            raise BadRequest(f"the gallery cannot be organised: {error}") from error

    def map(self) -> dict[str, Any]:
        """2-D coordinates of the gallery's embeddings (as they are when 2-D, else t-SNE or PCA: ``map.projection``),
        computed once, of at most ``map.max_points`` items (a seeded sample of larger galleries), each with its
        cluster (``clusters``: the cluster ids of the points, -1: noise; null when the gallery cannot be
        organised)."""
        answer = dict(self.views.map())
        try:
            cluster = self.organised().clusters.cluster
        except BadRequest:
            answer["clusters"], answer["cluster_count"] = None, 0
        else:
            answer["clusters"] = cluster[answer["ids"]].tolist()
            answer["cluster_count"] = int(cluster.max()) + 1 if len(cluster) else 0
        return answer

    def check_page(self, offset: Any, limit: Any) -> tuple[int, int]:
        """``offset`` (≥ 0, default 0) and ``limit`` (1 … max_k, default max_k) of a paged view, or
        :class:`BadRequest`."""
        largest = self.limits.max_k
        values = []
        for name, value, least, most, default in (
            ("offset", offset, 0, None, 0),
            ("limit", limit, 1, largest, largest),
        ):
            if value is None or (isinstance(value, str) and not value.strip()):
                values.append(default)
                continue
            text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
            if not re.fullmatch(r"-?[0-9]{1,18}", text) or int(text) < least or (most and int(text) > most):
                valid = f"from {least} to {most} (max_k={largest})" if most else f"{least} or more"
                raise BadRequest(f"{name} must be an integer {valid}, got {_shown(value, 20)}.")
            values.append(int(text))
        return values[0], values[1]

    def _labels_inside(self) -> list[str] | None:
        labels = self.gallery.labels
        return None if labels is None else [label if label is not None else "(no label)" for label in labels]

    def clusters(self) -> dict[str, Any]:
        """``GET /clusters``: how the gallery was clustered and each cluster, largest first: its size, mean cosine to
        its centre, the labels inside (a labelled gallery) and a few of its items nearest the centre."""
        found = self.organised()
        clusters = found.clusters
        rows = clusters.summary(self._labels_inside())
        for row in rows:
            members = self._members(int(row["cluster"]))
            row["mean_cosine"] = round(float(row["mean_cosine"]), 6)
            row["preview"] = [
                {"id": int(i), "image": f"/items/{int(i)}" if self.has_images else None} for i in members[:PREVIEW]
            ]
        return {
            "method": clusters.method,
            "k": len(clusters.centres),
            "items": self.size,
            "noise": int((clusters.cluster == NOISE).sum()),
            **{name: round(value, 6) for name, value in clusters.metrics.items()},
            "options": {key: value for key, value in self.views.options.items() if value is not None},
            "clusters": rows,
        }

    def _members(self, c: int) -> np.ndarray:
        clusters = self.organised().clusters
        members = np.flatnonzero(clusters.cluster == c)
        return members[np.lexsort((members, -clusters.cosine[members]))]  # nearest the centre first

    def cluster(self, value: Any, offset: Any = None, limit: Any = None) -> dict[str, Any]:
        """``GET /clusters/{c}``: the items of cluster ``c``, nearest its centre first (each a search result, its
        ``cosine`` to the centre), paged by ``offset`` and ``limit``."""
        start, count = self.check_page(offset, limit)
        clusters = self.organised().clusters
        k = len(clusters.centres)
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
        if not re.fullmatch(r"[0-9]{1,18}", text) or int(text) >= k:
            raise NotFound(
                f"no cluster {_shown(value, 20)}: clusters are the integers 0 to {k - 1} (GET /clusters lists them)."
            )
        c = int(text)
        members = self._members(c)
        shown = members[start : start + count].tolist()
        return {
            "cluster": c,
            "size": len(members),
            "mean_cosine": round(float(clusters.cosine[members].mean()), 6),
            "offset": start,
            "limit": count,
            "cosine": "to the cluster's centre",
            "items": [
                self.result(rank, int(i), float(clusters.cosine[i]), None)
                for rank, i in enumerate(shown, start=start + 1)
            ],
        }

    def duplicates(self, offset: Any = None, limit: Any = None) -> dict[str, Any]:
        """``GET /duplicates``: the near-duplicate groups, largest first, paged by ``offset`` and ``limit``; each
        group's items (at most max_k shown), the first the one to keep, each with its cosine to that first item."""
        start, count = self.check_page(offset, limit)
        duplicates = self.organised().duplicates
        x = self.gallery.embeddings
        groups = []
        for g, items in enumerate(duplicates.groups[start : start + count], start=start):
            first = int(items[0])
            kept = x[first].astype(np.float64) / max(float(np.linalg.norm(x[first])), 1e-12)
            shown = [int(i) for i in items[: self.limits.max_k]]
            vectors = x[shown].astype(np.float64)
            cosines = vectors @ kept / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
            rows = [
                {**self.result(rank, i, float(cos), None), "keep": rank == 1}
                for rank, (i, cos) in enumerate(zip(shown, cosines.tolist(), strict=True), start=1)
            ]
            groups.append({"group": g, "size": len(items), "items": rows})
        in_groups = int(sum(len(items) for items in duplicates.groups))
        return {
            "threshold": duplicates.threshold,
            "method": duplicates.method,
            "exact": duplicates.exact,
            "pairs": len(duplicates.pairs),
            "groups_total": len(duplicates.groups),
            "items_in_groups": in_groups,
            "to_remove": in_groups - len(duplicates.groups),
            "offset": start,
            "limit": count,
            "cosine": "to the group's first item, the one to keep",
            "groups": groups,
        }


def _bomb_pixels(error: BaseException) -> int | None:
    """The pixel count in Pillow's DecompressionBombError ("Image size (400000000 pixels) exceeds limit …")."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def _json_value(value: Any) -> Any:
    """A label field's value (a numpy scalar or row) as JSON: numbers, lists of them; NaN and inf as null."""
    value = np.asarray(value).tolist()
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def checkpoint_path(ckpt_path: Any, run_dir: Any) -> Path:
    """The checkpoint to serve: ``ckpt_path``, or the best checkpoint of the training run ``run_dir``
    (``checkpoints/best-*.ckpt``: best validation recall@1), else its ``checkpoints/last.ckpt``."""
    if ckpt_path and run_dir:
        raise UserError(
            f"give either ckpt_path= or run_dir=, not both (ckpt_path={ckpt_path}, run_dir={run_dir}); run_dir=RUN "
            f"serves the run's best checkpoint."
        )
    if ckpt_path:
        return Path(str(ckpt_path)).expanduser()
    if not run_dir:
        raise UserError(
            "no model: give ckpt_path=<run>/checkpoints/last.ckpt (a checkpoint written by training) or run_dir=<run> "
            "(a training run dir: its best checkpoint), e.g. simlearn-serve run_dir=outputs/train/runs/<run>."
        )
    folder = Path(str(run_dir)).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"run_dir={str(run_dir)!r} is not a folder; give a training run dir (outputs/train/runs/<run>)."
        )
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"))
    if len(best) > 1:
        names = ", ".join(p.name for p in best[:4])
        raise UserError(
            f"run_dir={str(run_dir)!r} holds {len(best)} best checkpoints ({names}); choose one with "
            f"ckpt_path={folder / 'checkpoints'}/<file>.ckpt."
        )
    last = folder / "checkpoints" / "last.ckpt"
    if best or last.is_file():
        return best[0] if best else last
    raise UserError(
        f"run_dir={str(run_dir)!r} has no checkpoints/best-*.ckpt nor checkpoints/last.ckpt; give a training run dir "
        f"(outputs/train/runs/<run>) or ckpt_path=PATH."
    )


def open_service(cfg: DictConfig) -> SearchService:
    """Load the checkpoint's encoder on ``cfg.device`` (auto: the GPU when there is one), the gallery ``cfg.gallery``
    and how it is searched: through LanceDB for a LanceDB gallery, through its saved faiss index when it has
    ``faiss_threshold`` items or more.

    The checkpoint is ``cfg.ckpt_path`` or the best one of ``cfg.run_dir``. The gallery is a split of the checkpoint's
    own data (no gallery, or ``split:<name>``; :func:`~simlearn.serve.split_gallery.split_gallery`) or a folder, an
    npz or a LanceDB database (:func:`simlearn.retrieval.gallery.load_gallery`); either is embedded now or read from
    the cache.
    """
    defaults = ServiceLimits()  # a mistake in these is one line before anything is loaded
    limits = ServiceLimits(
        **{name: _positive(cfg, name, getattr(defaults, name)) for name in ServiceLimits.__dataclass_fields__}
    )
    steps = postprocessors(
        cfg.get("postprocess"), key="postprocess"
    )  # a wrong step name, too, before anything is loaded
    organise = organise_options(cfg.get("organise"))  # and the options of the catalogue views
    map_options = MapOptions.from_config(cfg.get("map"))
    code_search, rerank = check_code_search(cfg.get("code_index"), cfg.get("rerank"))
    split = gallery_split(cfg.get("gallery"))
    ckpt = checkpoint_path(cfg.get("ckpt_path"), cfg.get("run_dir"))
    if str(cfg.get("ckpt_path") or "") != str(ckpt):
        cfg = cfg.copy()  # the caller's config stays as it was given
        with open_dict(
            cfg
        ):  # a split's data is rebuilt from cfg.ckpt_path (simlearn.inference.embedding_files.rebuild)
            cfg.ckpt_path, cfg.run_dir = str(ckpt), None
    device = pick_device(cfg.get("device"))
    model = load_model(ckpt, device)
    images, source = None, None
    if split is not None:
        served = split_gallery(split, model, cfg)
        gallery, images, source = served.gallery, served.images, served.description
    else:
        gallery = load_gallery(cfg.gallery, model, cfg)
    # as simlearn-search: a LanceDB gallery is searched through LanceDB, a large one through its saved faiss index
    if gallery.codes is not None and steps:  # refused at the start, not on every request
        raise UserError(
            "postprocess= re-ranks float embeddings, but this gallery holds binary codes, searched by Hamming "
            "distance; leave out postprocess= (rerank=N re-ranks the Hamming candidates by the floats)."
        )
    index = search_index(gallery, cfg.get("faiss_threshold"), cfg.get("faiss_index") or "Flat", code_search, rerank)
    # the views' files go beside the gallery's own cache (where its faiss index goes), with cache=true
    cached = gallery.index_path if cfg.get("cache", True) else None
    views = GalleryViews(gallery, organise, map_options, cache=cached)
    views.check_size()
    return SearchService(model, gallery, limits, index, images, source, postprocess=steps, views=views)


def _positive(cfg: DictConfig, name: str, default: float) -> Any:
    """``cfg[name]`` as a positive number of the type of ``default`` (``default`` when absent), or a UserError."""
    value = cfg.get(name, default)
    value = default if value is None else value
    try:
        number = type(default)(value)
    except (TypeError, ValueError):
        number = None
    if isinstance(value, bool) or number is None or number <= 0 or (isinstance(default, int) and number != value):
        raise UserError(
            f"{name}={value!r} must be a positive {'integer' if isinstance(default, int) else 'number'}; "
            f"e.g. {name}={default}."
        )
    return number
