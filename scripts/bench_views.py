"""Images/s of the view pipeline (``data.views``): 1 and 2 views of each image, made in batches by
``simlearn.data.views`` on the device, against the same crop and affine done item by item with torchvision (what a
per-sample pipeline in DataLoader workers would cost per core).

    python scripts/bench_views.py                         # MNIST (28×28 grey, ssl_digits) and 64×64 colour (ssl)
    python scripts/bench_views.py --batch 512 --steps 30 --device cuda

MNIST is read from ``--data-root`` (default ``../shared/data``, the folder holding ``MNIST/raw/``) when it is there;
otherwise random 28×28 images stand in (the arithmetic is the same). Colour images are random. Each figure is the
best of ``--repeat`` rounds of ``--steps`` batches after one warm-up batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from simlearn.data.views import ViewMaker, view_transforms


def images(kind: str, batch: int, data_root: str) -> torch.Tensor:
    """A batch of normalised images: MNIST's first training images (or random ones), or random colour photos."""
    if kind == "mnist":
        try:
            from simlearn.data.mnist import MNISTDataModule

            tensors = MNISTDataModule(root=data_root, download=False, image_size=28, channels=1).load().images
            print(f"MNIST from {data_root}")
            return tensors[:batch].float() / 255
        except Exception:  # no MNIST here: random grey images
            print(f"no MNIST in {data_root}: random 28×28 images")
            return torch.rand(batch, 1, 28, 28)
    return torch.rand(batch, 3, 64, 64)


def rate(step, count: int, steps: int, repeat: int) -> float:
    step()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, time.perf_counter() - start)
    return count * steps / best


def measure(batch: torch.Tensor, transforms: list, steps: int, repeat: int) -> list[float]:
    """Images/s of one view and of two views by ``transforms`` in batches, and of torchvision item by item."""
    channels = batch.shape[1]
    mean, std = [0.5] * channels, [0.25] * channels
    normalised = {"image": (batch - 0.5) / 0.25, "index": torch.arange(len(batch), device=batch.device)}
    two = ViewMaker(transforms, 2, mean, std)
    generator = torch.Generator().manual_seed(0)

    def one_view() -> None:
        view = (normalised["image"] * 0.25 + 0.5).clamp(0, 1)
        for transform in transforms:
            view = transform(view, generator)
        _ = ((view - 0.5) / 0.25).sum().item()

    def two_views() -> None:
        _ = two(normalised, 0)["image"].sum().item()

    size = batch.shape[-1]
    per_item = v2.Compose(
        [v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True), v2.RandomAffine(15, (0.1, 0.1), shear=10)]
    )
    cpu = batch.cpu()

    def item_by_item() -> None:
        _ = torch.stack([per_item(image) for image in cpu]).sum().item()

    figures = [rate(f, len(batch), steps, repeat) for f in (one_view, two_views)]
    return [*figures, rate(item_by_item, len(batch), max(1, steps // 4), repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch threads {torch.get_num_threads()}, device {device}, batch {args.batch}")
    print(
        "| images | preset | 1 view (images/s) | 2 views (images/s, 2 views each) | item by item, torchvision "
        "crop + affine, 1 view (images/s) |"
    )
    print("| --- | --- | ---: | ---: | ---: |")
    for kind, preset in (("mnist", "ssl_digits"), ("colour 64×64", "ssl")):
        batch = images(kind, args.batch, args.data_root).to(device)
        figures = measure(batch, view_transforms(preset), args.steps, args.repeat)
        print(f"| {kind} | {preset} | {figures[0]:,.0f} | {figures[1]:,.0f} | {figures[2]:,.0f} |")


if __name__ == "__main__":
    main()
