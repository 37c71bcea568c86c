"""The leak check of a training run (``reports.leaks``, off by default): after testing, the trained model embeds
every split and the val and test items with a near-duplicate in the training split are counted and listed, as
``simlearn-organise data=…`` does it (the same functions: :func:`simlearn.organise.command.embed_data_gallery`, then
:func:`simlearn.organise.leaks.leaks` and :func:`~simlearn.organise.leaks.write_leaks`).

Its cost: one more forward pass over every split (the training split is usually the largest; evaluation transforms,
no gradients), and the exact search of each held-out item's nearest training item (chunked dot products: N_held-out ×
N_train × d multiply-adds, memory per chunk of queries, never all pairs). Off by default for that reason."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simlearn.organise.duplicates import check_threshold

log = logging.getLogger(__name__)

__all__ = ["LeakReport"]


@dataclass
class LeakReport:
    """After testing, with ``enabled``: ``leaks.csv`` in the run dir (the val/test items whose nearest training item
    is at cosine ≥ ``threshold``, with both files; a warning with the counts per split when there are any) and the
    counts as metrics (``test/leaks/<split>``: items of that split with a near-copy in train). ``batch_size``: of the
    embedding pass (None: the data's evaluation batch size)."""

    enabled: bool = False
    threshold: float = 0.999
    batch_size: int | None = None

    def __post_init__(self) -> None:
        self.threshold = check_threshold(self.threshold, "reports.leaks.threshold")

    def __call__(self, trainer: Any, model: Any, datamodule: Any, output_dir: str | Path) -> dict[str, float]:
        if not self.enabled:
            return {}
        # imported here: the organise command draws its sheets through simlearn.reports.plots (a cycle otherwise)
        from simlearn.organise.command import embed_data_gallery
        from simlearn.organise.leaks import write_leaks

        if "train" not in datamodule.datasets or len(datamodule.datasets["train"]) == 0:
            log.info("leak check: the data has no training items to compare the other splits with; nothing checked")
            return {}
        data = embed_data_gallery(model.encoder, datamodule, model.device, self.batch_size)
        if len(set(data.splits)) < 2:
            log.info("leak check: only the training split holds items; nothing checked")
            return {}
        found = data.leaks(self.threshold)
        path = write_leaks(found, Path(output_dir) / "leaks.csv")
        if not found.leaks:
            checked = ", ".join(f"{n} {split}" for split, n in found.checked.items())
            log.info("leak check: none of the %s items has a near-duplicate in train (cos >= %s): %s", checked,
                     found.threshold, path)  # fmt: skip
        return {split: float(count) for split, count in found.counts.items()}
