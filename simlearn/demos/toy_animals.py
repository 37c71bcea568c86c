"""Toy animals: small procedurally drawn colour images of animals built from shared attributes.

A demonstration of the animals experiment that runs in a minute on a CPU, not a substitute for real photos
(``data=awa2``). Every image is drawn from its class's attributes with a random pose (position, size, facing,
tilt), random colours within the class's range and pixel noise:

============  ======================  ===========  ============================  ==========
class          colour                  stripes      shape                          background
============  ======================  ===========  ============================  ==========
dolphin        grey                    no           smooth body, fin, no legs      water
tiger          orange                  black        four legs, cat head, long tail land
horse          brown, black, grey,     no           four legs, neck up, horse head land
               white
zebra          white                   black        horse shape                    land
============  ======================  ===========  ============================  ==========

The zebra shares its stripes with the tiger and its shape with the horse, so a network trained on dolphin, tiger
and horse that never saw a zebra should put zebras between tigers and horses. Images are deterministic from the
seed: each class draws from its own stream, so selecting or reordering classes does not change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from simlearn.data.base import EmbeddingDataModule
from simlearn.data.in_memory import ImageTensors
from simlearn.errors import UserError


@dataclass(frozen=True)
class Animal:
    #: coat colours, one drawn per image
    colours: tuple[tuple[float, float, float], ...]
    striped: bool
    shape: str  # "dolphin", "cat" (four legs, tail) or "horse" (four legs, neck and long head)
    background: str  # "water" or "land"


#: Every class the generator can draw, in a fixed order (its stream of random numbers is seeded by its position).
ANIMALS: dict[str, Animal] = {
    "dolphin": Animal(colours=((0.52, 0.56, 0.62),), striped=False, shape="dolphin", background="water"),
    "tiger": Animal(colours=((0.95, 0.52, 0.10),), striped=True, shape="cat", background="land"),
    # bay, chestnut, black, grey and white horses: colour alone does not tell a horse
    "horse": Animal(
        colours=((0.50, 0.30, 0.15), (0.70, 0.38, 0.18), (0.15, 0.12, 0.10), (0.60, 0.60, 0.60), (0.90, 0.89, 0.86)),
        striped=False,
        shape="horse",
        background="land",
    ),
    "zebra": Animal(colours=((0.93, 0.93, 0.91),), striped=True, shape="horse", background="land"),
}
#: Attribute label fields each item carries besides the class, 0/1.
ATTRIBUTES = ("striped", "four_legged", "on_land")


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 <= 1.0


def _segment(x: np.ndarray, y: np.ndarray, p: tuple[float, float], q: tuple[float, float], width: float) -> np.ndarray:
    """Points within ``width / 2`` of the segment p–q."""
    px, py = p
    dx, dy = q[0] - px, q[1] - py
    t = np.clip(((x - px) * dx + (y - py) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (x - px - t * dx) ** 2 + (y - py - t * dy) ** 2 <= (width / 2) ** 2


def _triangle(x: np.ndarray, y: np.ndarray, a, b, c) -> np.ndarray:
    def side(p, q):
        return (x - q[0]) * (p[1] - q[1]) - (p[0] - q[0]) * (y - q[1])

    d1, d2, d3 = side(a, b), side(b, c), side(c, a)
    negative = (d1 < 0) | (d2 < 0) | (d3 < 0)
    positive = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(negative & positive)


def body_mask(shape: str, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The animal's silhouette in its own coordinates (facing +x, y down, body centred at 0)."""
    if shape == "dolphin":
        body = _ellipse(x, y, 0.0, 0.0, 0.34, 0.085) | _ellipse(x, y, -0.2, 0.01, 0.16, 0.05)
        beak = _segment(x, y, (0.3, 0.02), (0.42, 0.03), 0.035)
        fin = _triangle(x, y, (-0.05, -0.06), (0.08, -0.06), (-0.08, -0.19))
        fluke = _triangle(x, y, (-0.33, 0.0), (-0.46, -0.1), (-0.44, 0.1))
        flipper = _triangle(x, y, (0.08, 0.05), (0.16, 0.05), (0.02, 0.14))
        return body | beak | fin | fluke | flipper
    legs = np.zeros_like(x, dtype=bool)
    spread = rng.uniform(-0.03, 0.03, size=4)  # walking pose: legs swing a little
    for i, x0 in enumerate((-0.2, -0.12, 0.1, 0.18)):
        legs |= _segment(x, y, (x0, 0.04), (x0 + spread[i], 0.3), 0.05)
    if shape == "cat":
        body = _ellipse(x, y, 0.0, 0.0, 0.27, 0.1)
        head = _ellipse(x, y, 0.3, -0.05, 0.075, 0.07)
        ears = _triangle(x, y, (0.26, -0.1), (0.3, -0.1), (0.27, -0.15)) | _triangle(
            x, y, (0.31, -0.1), (0.35, -0.1), (0.33, -0.15)
        )
        tail = _segment(x, y, (-0.26, -0.02), (-0.4, 0.12), 0.03) | _segment(x, y, (-0.4, 0.12), (-0.48, 0.05), 0.03)
        return body | legs | head | ears | tail
    body = _ellipse(x, y, 0.0, 0.0, 0.26, 0.1)
    neck = _segment(x, y, (0.19, -0.03), (0.3, -0.2), 0.08)
    head = _segment(x, y, (0.29, -0.21), (0.41, -0.13), 0.07)
    ears = _triangle(x, y, (0.27, -0.22), (0.3, -0.22), (0.27, -0.28))
    mane = _segment(x, y, (0.17, -0.08), (0.27, -0.24), 0.04)
    tail = _segment(x, y, (-0.25, -0.03), (-0.33, 0.16), 0.04)
    return body | legs | neck | head | ears | mane | tail


def draw_animal(animal: Animal, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (3, size, size) float image in [0, 1] of ``animal`` in a random pose, colour and noise."""
    hi = 2 * size  # drawn at twice the size, then averaged down (anti-aliasing)
    v, u = np.mgrid[0:hi, 0:hi].astype(np.float64)
    u, v = (u + 0.5) / hi, (v + 0.5) / hi
    image = np.empty((hi, hi, 3))
    if animal.background == "water":
        top = np.array([0.30, 0.55, 0.80]) + rng.uniform(-0.06, 0.06, 3)
        bottom = np.array([0.05, 0.22, 0.50]) + rng.uniform(-0.05, 0.05, 3)
        image[:] = top + (bottom - top) * v[..., None]
        waves = np.sin(2 * np.pi * (rng.uniform(3, 6) * u + rng.uniform(8, 14) * v) + rng.uniform(0, 2 * np.pi))
        image += 0.06 * (waves > 0.7)[..., None]
        cy = rng.uniform(0.4, 0.65)
    else:
        horizon = rng.uniform(0.3, 0.5)
        sky = np.array([0.62, 0.78, 0.95]) + rng.uniform(-0.06, 0.06, 3)
        ground = np.array([0.45, 0.58, 0.22]) + np.array([1.0, 0.8, 0.3]) * rng.uniform(-0.1, 0.15)
        image[:] = np.where((v < horizon)[..., None], sky, ground * (0.85 + 0.3 * (v[..., None] - horizon)))
        tufts = np.sin(2 * np.pi * rng.uniform(10, 20) * u + rng.uniform(0, 2 * np.pi)) > 0.8
        image -= 0.05 * ((v > horizon) & tufts)[..., None]
        cy = rng.uniform(0.42, 0.58)
    cx = rng.uniform(0.38, 0.62)
    scale = rng.uniform(0.75, 1.1)
    facing = rng.choice([-1.0, 1.0])
    tilt = np.radians(rng.uniform(-12, 12))
    dx, dy = (u - cx) / scale, (v - cy) / scale
    x = facing * (np.cos(tilt) * dx + np.sin(tilt) * dy)
    y = -np.sin(tilt) * dx + np.cos(tilt) * dy
    mask = body_mask(animal.shape, x, y, rng)
    base = np.array(animal.colours[rng.integers(len(animal.colours))])
    colour = np.clip(base * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05, 3), 0, 1)
    coat = colour * (1.05 - 0.35 * np.clip(y + 0.1, 0, 0.4))[..., None]  # darker belly: a little volume
    if animal.striped:
        frequency = rng.uniform(11, 15)
        wobble = rng.uniform(1.5, 3.0)
        phase = np.sin(2 * np.pi * (frequency * x + wobble * y * y) + rng.uniform(0, 2 * np.pi))
        stripes = phase > rng.uniform(0.2, 0.45)
        coat = np.where(stripes[..., None], np.array([0.06, 0.05, 0.05]), coat)
    image = np.where(mask[..., None], coat, image)
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    image += rng.normal(0.0, rng.uniform(0.02, 0.06), image.shape)
    return np.clip(image, 0.0, 1.0).transpose(2, 0, 1)


def draw_class(name: str, count: int, size: int, seed: int) -> np.ndarray:
    """``count`` images (count, 3, size, size) uint8 of class ``name``, from the class's own seeded stream."""
    rng = np.random.default_rng([seed, list(ANIMALS).index(name)])
    images = np.stack([draw_animal(ANIMALS[name], size, rng) for _ in range(count)]) if count else np.zeros(0)
    return np.round(images * 255).astype(np.uint8).reshape(count, 3, size, size)


def attribute_fields(names: Sequence[str], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """0/1 attribute fields ``striped``, ``four_legged``, ``on_land`` per item, from its class."""
    table = {
        "striped": [ANIMALS[n].striped for n in names],
        "four_legged": [ANIMALS[n].shape != "dolphin" for n in names],
        "on_land": [ANIMALS[n].background == "land" for n in names],
    }
    return {key: torch.tensor(values, dtype=torch.long)[labels] for key, values in table.items()}


class ToyAnimalsDataModule(EmbeddingDataModule):
    """Procedurally drawn animals (see the module doc), held in memory; label field ``animal`` (classes 0..C−1 in
    the order of ``classes``) plus the attribute fields ``striped``, ``four_legged`` and ``on_land`` (0/1).

    Only the ``classes`` (``per_class`` images each) and ``probe_classes`` (``probe_per_class`` each) are drawn; the
    probe classes are kept out of train/val/test like every source's (labels C, C+1, …, :meth:`probe_dataloader`).
    """

    name = "toy_animals"

    def __init__(
        self,
        classes: Sequence[str] | None = ("dolphin", "tiger", "horse"),
        probe_classes: Sequence[str] | None = ("zebra",),
        per_class: int = 400,
        probe_per_class: int = 150,
        **kwargs: Any,
    ) -> None:
        probes = [str(c) for c in probe_classes or []]
        classes = [str(c) for c in classes] if classes is not None else [a for a in ANIMALS if a not in probes]
        kwargs.setdefault("label_field", "animal")
        kwargs.setdefault("channels", 3)
        kwargs.setdefault("image_size", 32)
        kwargs.setdefault("num_classes", len(classes))
        super().__init__(classes=classes, probe_classes=probes, **kwargs)
        unknown = sorted(set(self.wanted_classes()) - set(ANIMALS))
        if unknown:
            raise UserError(
                f"data.classes/probe_classes name {unknown}, which toy_animals cannot draw; valid: {list(ANIMALS)}."
            )
        for key, value in {"per_class": per_class, "probe_per_class": probe_per_class}.items():
            if not isinstance(value, int) or value < 1:
                raise UserError(f"data.{key} must be a positive integer, got {value!r}.")
        self.per_class = per_class
        self.probe_per_class = probe_per_class

    def load(self) -> ImageTensors:
        if self.channels != 3:
            raise UserError(f"toy_animals draws colour images: set data.channels=3, got {self.channels}.")
        names = self.wanted_classes()
        counts = [self.per_class] * len(self.classes) + [self.probe_per_class] * len(self.probe_classes)
        images = np.concatenate(
            [draw_class(n, c, self.image_size, self.seed) for n, c in zip(names, counts, strict=True)]
        )
        labels = torch.arange(len(names)).repeat_interleave(torch.tensor(counts))
        return ImageTensors(
            images=torch.from_numpy(images),
            fields={self.label_field: labels, **attribute_fields(names, labels)},
            names={self.label_field: names, **{a: ["no", "yes"] for a in ATTRIBUTES}},
        )
