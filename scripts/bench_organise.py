"""Which model finds near-duplicates: planted copies of real test images, found by four embeddings.

    python scripts/bench_organise.py --quick                        # smoke run: about 6 min of a shared 2-core CPU
    nice -n 10 python scripts/bench_organise.py --datasets mnist --max-train 10000 --epochs 1 --check-only
        # the copy check's column alone (no planted catalogue, no pair counts): 9 min there with the rows' training,
        # 1 min when the trained rows of an earlier run in --out are reused
    nice -n 10 python scripts/bench_organise.py --mnist-root /work/shared/data/MNIST/raw --max-train 10000 --epochs 1
        # README "Organising a catalogue": 30 min of a 2-core CPU shared with other jobs (load 10-16): planting the
        # 18,000 MNIST copies 10 min, SimCLR's training 10 min, each model's scores 1-3 min

For each dataset (real MNIST test images, read from ``--mnist-root``; the test split of scikit-learn's digits, the
embedded default data) ``--sources`` test images get one planted copy of each edit kind (``KINDS``: an exact copy as
the control, then one edit alone: a crop of 5-10 % of each side resized back, a shift of 1-2 px (1 px on the 8 × 8
digits), a rotation of 2-5°, brightness or contrast × (1 ± 0.05-0.10), JPEG quality 75-95, a resize down to 75-90 %
and back up; and ``chain``, every edit of :mod:`simlearn.data.copies` at once, the copy of the label-free copy
metric), drawn from a generator seeded per image; the other test images (``--distractors`` of them) are mixed in.

Embeddings compared (each model trained inside the script by ``simlearn.train``, the same budget: ``--epochs`` over
at most ``--max-train`` training images, batch ``--batch``, seed ``--seed``):

* ``supervised``: the default model of the data (``loss=softmax``, the class-supervised cosine classifier);
* ``simclr``: the label-free model (``loss=simclr data.labels=none``);
* ``untrained``: the same network as built (``train=false``);
* ``pixels``: the raw pixels in [0, 1], flattened and scaled to unit length (no model): the encoder of
  :func:`simlearn.inference.pixels.pixel_model` (``simlearn-organise embedder=pixels``) at the images' own size.

Counting rule: a found pair is any two items at cosine ≥ the threshold, counted exactly over all pairs (in chunks,
never an N × N matrix; ``simlearn-organise`` finds the same pairs up to its ``max_neighbours`` per item). It is true
when it is a planted pair: (source, copy) or (copy, copy) of one source; the planted pairs are all of those, 45 per
source (10 items). Precision = true found / found, recall = true found / planted, at each of ``THRESHOLDS``. At the
threshold of best F1 (among them): the recall of each edit kind, the share of (source, that kind's copy) pairs found.
Clusters: k-means (k = 10, :func:`simlearn.organise.cluster_embeddings`) of the unedited test images, NMI/AMI
against the digits. Copy check: :func:`simlearn.organise.copy_check.copy_scores` (the command's warning) on the
sources with their brightness/contrast + JPEG check copy, among the unedited test images, at the default threshold
0.999: the shares of check copies below it and not above their source's nearest other test image, and the share of
sources whose nearest other test image is at cos ≥ 0.999 (the merge rule).

Bounded in time: the embeddings of (sources × 10 + distractors) items, the pair count is O(N² d) multiply-adds in
chunks (28,000 MNIST items: 1-2 min a model on that CPU). Results: ``OUT/results.json`` and ``OUT/tables.md`` (printed);
trained rows are kept in ``OUT/<dataset>/<row>/`` and read back (their best checkpoint) when run again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_common import QUIET_RUN  # noqa: E402  (scripts/ is on the path of a script run from it)

THRESHOLDS = (0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
KINDS = ("exact", "crop", "shift", "rotation", "brightness", "contrast", "jpeg", "resize", "chain")
MODELS = ("supervised", "simclr", "untrained", "pixels")
#: the command's default threshold, at which the copy check is scored
DEFAULT_THRESHOLD = 0.999


# -- the planted copies ------------------------------------------------------------------------------------------------
def edit(image: torch.Tensor, kind: str, generator: torch.Generator, item: int, seed: int) -> torch.Tensor:
    """One copy of ``image`` (C × H × W in [0, 1]) by one edit ``kind``; ``chain`` is simlearn's near-duplicate
    (every edit of :class:`simlearn.data.copies.CopyEdits` at once). Each single kind applies one of those steps
    alone, at a fixed strength, so that its recall is that edit's."""
    from torchvision.transforms.v2 import functional as F

    from simlearn.data.copies import jpeg_round_trip, near_duplicate

    def uniform(low: float, high: float) -> float:
        return float(low + (high - low) * torch.rand((), generator=generator))

    def sign() -> int:
        return 1 if torch.rand((), generator=generator) < 0.5 else -1

    _, height, width = image.shape
    if kind == "exact":
        return image.clone()
    if kind == "crop":
        keep_h, keep_w = (max(1, round(side * (1 - uniform(0.05, 0.10)))) for side in (height, width))
        top = int(torch.randint(0, height - keep_h + 1, (), generator=generator))
        left = int(torch.randint(0, width - keep_w + 1, (), generator=generator))
        return F.resized_crop(image, top, left, keep_h, keep_w, [height, width], antialias=True)
    if kind in ("shift", "rotation"):
        most = max(1, round(width / 14))  # 2 px of 28, 1 px of 8
        shift = [0, 0]
        if kind == "shift":
            while shift == [0, 0]:
                shift = [int(torch.randint(-most, most + 1, (), generator=generator)) for _ in range(2)]
        angle = sign() * uniform(2, 5) if kind == "rotation" else 0.0
        return F.affine(image, angle=angle, translate=shift, scale=1.0, shear=[0.0, 0.0],
                        interpolation=F.InterpolationMode.BILINEAR)  # fmt: skip
    if kind == "brightness":
        return F.adjust_brightness(image, 1 + sign() * uniform(0.05, 0.10)).clamp(0, 1)
    if kind == "contrast":
        return F.adjust_contrast(image, 1 + sign() * uniform(0.05, 0.10)).clamp(0, 1)
    if kind == "jpeg":
        return jpeg_round_trip(image, int(torch.randint(75, 96, (), generator=generator)))
    if kind == "resize":
        small = [max(1, round(side * uniform(0.75, 0.90))) for side in (height, width)]
        return F.resize(F.resize(image, small, antialias=True), [height, width], antialias=True)
    if kind == "chain":
        return near_duplicate(image, item, seed)
    raise ValueError(f"unknown edit kind {kind!r}; one of {KINDS}")


def source_indices(count: int, sources: int, distractors: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded test images that get planted copies, and the distractors, of ``count`` test images."""
    order = np.random.default_rng(seed).permutation(count)
    return order[:sources], order[sources : sources + distractors]


def planted_catalogue(images: torch.Tensor, sources: int, distractors: int, seed: int) -> dict[str, np.ndarray]:
    """The catalogue: ``sources`` seeded test images, each followed by its copy of every kind, then ``distractors``
    other test images. ``images`` (N, C, H, W) float in [0, 1]. Returns the items (M, C, H, W), each item's
    ``group`` (its source's number; -1 for a distractor), ``kind`` (its index in KINDS, -1 for a source or
    distractor) and ``source_item`` (the item number of each source)."""
    chosen, others = source_indices(len(images), sources, distractors, seed)
    items, group, kind, source_item = [], [], [], []
    for s, index in enumerate(chosen.tolist()):
        image = images[index].float()
        source_item.append(len(items))
        items.append(image)
        group.append(s)
        kind.append(-1)
        for k, name in enumerate(KINDS):
            generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(index) * 16 + k)
            items.append(edit(image, name, generator, int(index), seed).clamp(0, 1))
            group.append(s)
            kind.append(k)
    for index in others.tolist():
        items.append(images[index].float())
        group.append(-1)
        kind.append(-1)
    return {
        "images": torch.stack(items).numpy(),
        "group": np.array(group),
        "kind": np.array(kind),
        "source_item": np.array(source_item),
        "test_index": chosen,
    }


# -- the scores -------------------------------------------------------------------------------------------------------
def pair_counts(x: np.ndarray, group: np.ndarray, thresholds: tuple[float, ...], chunk: int = 1024) -> np.ndarray:
    """Per threshold, how many pairs i < j of the unit rows ``x`` have cosine ≥ it: (found, true found), true when
    both items have one group ≥ 0. Chunks of ``chunk`` rows against the rows after them: memory chunk × N."""
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    g = torch.from_numpy(group)
    t = torch.tensor(thresholds, dtype=torch.float32)
    counts = np.zeros((len(thresholds), 2), dtype=np.int64)
    n = len(x)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        sims = x[start:stop] @ x[start:].T
        upper = torch.arange(start, stop)[:, None] < torch.arange(start, n)[None, :]
        same = (g[start:stop, None] == g[None, start:]) & (g[start:stop, None] >= 0)
        for i, value in enumerate(t):
            hit = (sims >= value) & upper
            counts[i, 0] += int(hit.sum())
            counts[i, 1] += int((hit & same).sum())
    return counts


def unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def score(
    embeddings: np.ndarray, catalogue: dict, test_embeddings: np.ndarray, digits: np.ndarray, check: dict
) -> dict:
    """Every figure of one embedding of the catalogue (see the module docstring)."""
    from simlearn.organise import cluster_embeddings

    x, group, kind = unit(embeddings), catalogue["group"], catalogue["kind"]
    sources = int(group.max()) + 1
    per_group = len(KINDS) + 1
    planted = sources * per_group * (per_group - 1) // 2
    counts = pair_counts(x, group, THRESHOLDS)
    rows = []
    for t, (found, true) in zip(THRESHOLDS, counts.tolist(), strict=True):
        precision = true / found if found else float("nan")
        recall = true / planted
        f1 = 2 * precision * recall / (precision + recall) if found and (precision + recall) else 0.0
        rows.append({"threshold": t, "found": found, "true": true, "precision": precision, "recall": recall, "f1": f1})
    best = max(rows, key=lambda row: row["f1"])
    source_of = catalogue["source_item"][group[kind >= 0]]
    copy_cos = np.einsum("ij,ij->i", x[kind >= 0].astype(np.float64), x[source_of].astype(np.float64))
    kinds = kind[kind >= 0]
    per_kind = {
        name: {
            "recall": float((copy_cos[kinds == k] >= best["threshold"]).mean()),
            "median_cosine": float(np.median(copy_cos[kinds == k])),
        }
        for k, name in enumerate(KINDS)
    }
    clusters = cluster_embeddings(test_embeddings, k=10, labels=[str(d) for d in digits])
    return {
        "items": len(x),
        "planted_pairs": planted,
        "thresholds": rows,
        "best_f1": best,
        "per_kind": per_kind,
        "nmi": clusters.metrics.get("nmi"),
        "ami": clusters.metrics.get("ami"),
        "copy_check": copy_check(test_embeddings, check["copies"], catalogue["test_index"]),
    }


def copy_check(test_embeddings: np.ndarray, copies: np.ndarray, sources: np.ndarray) -> dict:
    """The command's copy check (:func:`simlearn.organise.copy_check.copy_scores`) at the default threshold: the
    check copies of the test images ``sources`` among the unedited test images."""
    from simlearn.organise.copy_check import copy_scores

    return copy_scores(copies, test_embeddings[sources], test_embeddings, sources, DEFAULT_THRESHOLD).summary()


# -- the models -------------------------------------------------------------------------------------------------------
def data_overrides(args: argparse.Namespace, dataset: str) -> list[str]:
    if dataset == "digits":
        data = ["data=digits"]
    else:
        root = Path(args.mnist_root).resolve().parents[1]  # the folder that holds MNIST/raw/
        data = ["data=mnist", f"data.root={root}", "data.download=false", "data.max_val=1000", "data.max_test=500"]
    caps = [f"data.max_train={args.max_train}"] if args.max_train else []
    return [*data, *caps, f"data.batch_size={args.batch}", f"trainer.max_epochs={args.epochs}", f"seed={args.seed}",
            *QUIET_RUN]  # fmt: skip


ROW_OVERRIDES = {"supervised": [], "simclr": ["loss=simclr", "data.labels=none"], "untrained": ["train=false"]}


def encoder_of(args: argparse.Namespace, dataset: str, row: str) -> tuple[torch.nn.Module, dict, dict]:
    """The row's encoder (eval mode, CPU), its preprocessing and a note on its training: its best checkpoint when
    the row was trained before, else trained now."""
    from simlearn.config import compose_config
    from simlearn.inference import load_model
    from simlearn.train import train_run

    out = Path(args.out) / dataset / row
    best = sorted((out / "checkpoints").glob("best-*.ckpt"))
    if best and (out / "metrics.json").is_file():
        model = load_model(best[-1])
        return model.encoder, model.preprocessing, json.loads((out / "metrics.json").read_text())
    if out.exists():  # unfinished, or untrained (rebuilt in seconds): from the start
        shutil.rmtree(out)
    started = time.perf_counter()
    run = train_run(compose_config([*data_overrides(args, dataset), *ROW_OVERRIDES[row]], output_dir=out))
    print(f"{dataset} {row}: trained in {time.perf_counter() - started:.0f} s", flush=True)
    if run.best_path:
        model = load_model(run.best_path)
        return model.encoder, model.preprocessing, run.metrics
    return run.model.encoder.cpu().eval(), dict(run.datamodule.preprocessing()), run.metrics


@torch.no_grad()
def embed(encoder: torch.nn.Module, preprocessing: dict, images: np.ndarray, batch: int = 1024) -> np.ndarray:
    """Unit embeddings of images (N, C, H, W) in [0, 1], normalised as the model was trained."""
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, -1, 1, 1)
    parts = [
        encoder((torch.from_numpy(images[i : i + batch]) - mean) / std).float().numpy()
        for i in range(0, len(images), batch)
    ]
    return unit(np.concatenate(parts))


def test_images(args: argparse.Namespace, dataset: str) -> tuple[torch.Tensor, np.ndarray]:
    """The test images (N, 1, H, W) in [0, 1] and their digits: MNIST's official 10,000, or the digits' test split
    (the split every digits run tests on)."""
    if dataset == "mnist":
        from torchvision.datasets import MNIST

        root = Path(args.mnist_root).resolve().parents[1]
        test = MNIST(root, train=False, download=False)
        return test.data.unsqueeze(1).float() / 255, test.targets.numpy()
    from sklearn.datasets import load_digits

    from simlearn.build import build_datamodule
    from simlearn.config import compose_config

    bunch = load_digits()
    datamodule = build_datamodule(compose_config(data_overrides(args, dataset)).data)
    datamodule.setup()
    index = datamodule.datasets["test"].indices.numpy()
    return torch.tensor(bunch.images[index], dtype=torch.float32).unsqueeze(1) / 16, bunch.target[index]


def bench(args: argparse.Namespace, dataset: str) -> dict:
    from simlearn.data.copies import near_duplicates
    from simlearn.inference.pixels import pixel_model
    from simlearn.organise.copy_check import CHECK_EDITS

    images, digits = test_images(args, dataset)
    sources = min(args.sources if dataset == "mnist" else args.digits_sources, len(images))
    distractors = len(images) - sources if args.distractors is None else min(args.distractors, len(images) - sources)
    # --check-only: the sources alone (planting the catalogue's copies is most of MNIST's time)
    catalogue = None if args.check_only else planted_catalogue(images, sources, distractors, args.seed)
    src = source_indices(len(images), sources, distractors, args.seed)[0]  # the catalogue's sources too
    check_copies = near_duplicates(images[src], src.tolist(), args.seed, CHECK_EDITS).numpy()
    results = {}
    for row in args.models:
        started = time.perf_counter()
        if row == "pixels":  # the command's pixel embedder, at the images' own size (no resize)
            pixels = pixel_model(int(images.shape[-1]), int(images.shape[1]))
            encoder, preprocessing, note = pixels.encoder, pixels.preprocessing, {}
        else:
            encoder, preprocessing, note = encoder_of(args, dataset, row)

        def embed_one(x: np.ndarray, encoder=encoder, preprocessing=preprocessing) -> np.ndarray:
            return embed(encoder, preprocessing, x)

        test = embed_one(images.numpy())
        if catalogue is None:
            figures = {"copy_check": copy_check(test, embed_one(check_copies), src)}
        else:
            figures = score(
                embed_one(catalogue["images"]), catalogue, test, digits, {"copies": embed_one(check_copies)}
            )
        figures["test/recall@1"] = note.get("test/recall@1")
        results[row] = figures
        print(f"{dataset} {row}: scored in {time.perf_counter() - started:.0f} s", flush=True)
    items = len(images) if catalogue is None else len(catalogue["group"])
    return {"sources": sources, "distractors": distractors, "items": items, "models": results}


# -- the tables -------------------------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


CHECK_SHARES = ("below_threshold", "not_above_neighbour", "neighbours_above_threshold")


def check_table(dataset: str, result: dict) -> str:
    """The copy check's figures alone (``--check-only``)."""
    head = f"**{dataset}**: the copy check at {DEFAULT_THRESHOLD} of {result['sources']:,} test images among the "
    lines = [head + f"{result['items']:,} (below it / not above the nearest other / nearest other at ≥ it):", ""]
    lines += ["| model | " + " | ".join(CHECK_SHARES) + " | warns |", "| --- |" + " ---: |" * (len(CHECK_SHARES) + 1)]
    for row, m in result["models"].items():
        check = m["copy_check"]
        lines.append(f"| {row} | " + " | ".join(_f(check[k], 4) for k in CHECK_SHARES) + f" | {check['warns']} |")
    return "\n".join(lines)


def tables(dataset: str, result: dict) -> str:
    models = result["models"]
    head = f"**{dataset}**: {result['sources']:,} sources × {len(KINDS)} copies + {result['distractors']:,} distractors"
    lines = [head + f" = {result['items']:,} items; precision / recall of the planted pairs (found pairs):", ""]
    lines += ["| model | " + " | ".join(str(t) for t in THRESHOLDS) + " |", "| --- |" + " --- |" * len(THRESHOLDS)]
    for row, m in models.items():
        cells = [f"{_f(r['precision'])} / {_f(r['recall'])} ({r['found']:,})" for r in m["thresholds"]]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "At each model's best-F1 threshold: recall per edit kind; NMI/AMI of k-means (k = 10) of the test "
              "images; check: the copy check at 0.999 (the share of check copies below it / not above their source's "
              "nearest other test image / the share of sources whose nearest other test image is at cos ≥ 0.999):",
              ""]  # fmt: skip
    cols = ["model", "best t", "F1", *KINDS, "NMI", "AMI", "check"]
    lines += ["| " + " | ".join(cols) + " |", "| --- |" + " ---: |" * (len(cols) - 1)]
    for row, m in models.items():
        best = m["best_f1"]
        kinds = [_f(m["per_kind"][k]["recall"], 2) for k in KINDS]
        check = m["copy_check"]
        shares = " / ".join(_f(check.get(key), 2) for key in CHECK_SHARES)
        cells = [row, str(best["threshold"]), _f(best["f1"]), *kinds, _f(m["nmi"]), _f(m["ami"]), shares]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Median cosine of each kind's copy to its source:", ""]
    lines += ["| model | " + " | ".join(KINDS) + " |", "| --- |" + " ---: |" * len(KINDS)]
    for row, m in models.items():
        lines.append(f"| {row} | " + " | ".join(_f(m["per_kind"][k]["median_cosine"], 4) for k in KINDS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "digits"], choices=["mnist", "digits"])
    parser.add_argument("--mnist-root", default=str(REPO.parent / "shared" / "data" / "MNIST" / "raw"),
                        help="the folder of MNIST's four IDX files")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sources", type=int, default=2000, help="MNIST test images that get planted copies")
    parser.add_argument("--digits-sources", type=int, default=300, help="digits test images with planted copies")
    parser.add_argument("--distractors", type=int, default=None, help="other test images mixed in; default all")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-train", type=int, default=20000, help="training images of each model (seeded)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 MNIST sources, 1,000 training images")
    parser.add_argument("--check-only", action="store_true",
                        help="the copy check's figures alone: no planted catalogue, no pair counts")  # fmt: skip
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_organise"))
    args = parser.parse_args()
    if args.quick:
        args.sources, args.digits_sources, args.max_train, args.epochs = 200, 60, 1000, 1
        args.distractors = 800 if args.distractors is None else args.distractors
    results = {}
    text = []
    for dataset in args.datasets:
        results[dataset] = bench(args, dataset)
        text.append((check_table if args.check_only else tables)(dataset, results[dataset]))
        print(text[-1] + "\n", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "results": results}, indent=1) + "\n")
    (out / "tables.md").write_text("\n\n".join(text) + "\n")


if __name__ == "__main__":
    main()
