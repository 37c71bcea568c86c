"""Write images of the digits data (scikit-learn's 8×8 digits, split as `data=digits` splits them) as PNG files,
one folder per digit: a ready-made query or gallery for `simlearn-search`.

    python scripts/digit_pngs.py --split test --out data/digit_pngs/test
    python scripts/digit_pngs.py --split val --out data/digit_pngs/query --count 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from simlearn.build import build_datamodule
from simlearn.config import compose_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["train", "val", "test"], default="test")
    parser.add_argument("--out", type=Path, required=True, help="folder to write <digit>/<index>.png into")
    parser.add_argument("--count", type=int, default=None, help="at most this many images, spread over the digits")
    parser.add_argument("--seed", type=int, default=42, help="the seed of the split (the training run's seed)")
    args = parser.parse_args()
    datamodule = build_datamodule(compose_config([f"seed={args.seed}"]).data)
    dataset = datamodule.datasets[args.split]
    rows = dataset.indices.numpy()
    digits = dataset.fields["digit"].numpy()
    if args.count is not None:  # round-robin over the digits, so that a few images cover many classes
        by_digit = [rows[digits[rows] == d] for d in range(10)]
        rows = np.array([r for group in zip(*by_digit, strict=False) for r in group][: args.count])
    images = dataset.images  # (N, 1, 8, 8) in [0, 1]
    for row in rows:
        path = args.out / str(int(digits[row])) / f"{int(row)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[row, 0].numpy() * 255).round().astype(np.uint8)).save(path)
    print(f"wrote {len(rows)} PNG files of the {args.split} split under {args.out}")


if __name__ == "__main__":
    main()
