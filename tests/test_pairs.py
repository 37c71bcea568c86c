"""Pair labels end to end: contrastive training on the pairs CSV data reports ROC AUC. (The pieces have their modules'
tests: test_data_pairs.py, test_losses_pairs.py, test_evaluation_evaluators.py.)"""

import json

from .helpers import run_training


def test_contrastive_pairs_train_and_report_roc_auc(tmp_path, pairs_csv):
    metrics = run_training(
        tmp_path / "run",
        "experiment=pairs_contrastive",
        f"data.csv={pairs_csv}",
        "backbone=small_cnn",
        "augment=none",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "head.out_dim=16",
        "optimizer.lr=0.003",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
    )
    assert 0.0 <= metrics["test/roc_auc"] <= 1.0 and metrics["val/best_roc_auc"] > 0.8
    assert metrics["test/roc_auc"] > 0.8 and metrics["test/num_pairs"] == 12  # 20 % of 30 similar + 30 dissimilar
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"test/accuracy", "test/threshold", "val/roc_auc"} <= set(written)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
