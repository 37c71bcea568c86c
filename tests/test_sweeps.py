"""Hydra multiruns on the digits: Optuna search, submitit (local) launcher, failures, the sweep table, wandb groups."""

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from simlearn.cli.collect import main as collect_main
from simlearn.config import config_dir
from simlearn.loggers import sweep_group
from simlearn.sweeps import collect

from .helpers import run_cli

# one short epoch per job: what is tested is the sweep machinery (each job's process, results, failures), not training
FAST = ["trainer.max_epochs=1", "data.max_train=300", "logger=none", "reports.plots=null", "trainer.accelerator=cpu"]


@pytest.mark.slow
def test_optuna_sweep_optimises_the_returned_validation_recall(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        *FAST,
        f"hydra.sweep.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads((tmp_path / str(i) / "metrics.json").read_text()) for i in range(3)]
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t["val/best_recall@1"] for t in trials)
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "head.out_dim"}
    assert "setup plugin" not in result.stdout + result.stderr  # alembic's lines as Optuna's sweeper imports it


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path):
    result = run_cli(
        "train.py",
        "-m",
        "hydra/launcher=local",
        "optimizer.lr=0.003,0.01",
        *FAST,
        f"hydra.sweep.dir={tmp_path}",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = collect(tmp_path)
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert {row["overrides"].split()[0] for row in rows} == {"optimizer.lr=0.003", "optimizer.lr=0.01"}
    assert list(tmp_path.glob(".submitit/*/*_log.out")), "jobs did not run through submitit"


@pytest.mark.slow
def test_a_failed_job_keeps_the_finished_results_and_is_reported(tmp_path, capsys):
    result = run_cli("train.py", "-m", "head.out_dim=16,0", *FAST, f"hydra.sweep.dir={tmp_path}", timeout=300)
    assert result.returncode != 0
    assert "head.out_dim must be an integer ≥ 1" in result.stderr
    assert (tmp_path / "0" / "metrics.json").exists() and not (tmp_path / "1" / "metrics.json").exists()

    collect_main([str(tmp_path), "--metric", "test/recall@1"])
    printed = capsys.readouterr().out
    assert "1 finished, 1 failed" in printed and "head.out_dim must be an integer" in printed
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("0,") and ",failed," in lines[2]


def test_sweep_jobs_share_a_wandb_group(tmp_path):
    assert sweep_group() is None or not HydraConfig.initialized()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "train",
            overrides=["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/2026-01-01_10-00-00"],
            return_hydra_config=True,
        )
    cfg.hydra.job.name = "train"
    HydraConfig.instance().set_config(cfg)
    try:
        assert sweep_group() == "train-2026-01-01_10-00-00"
    finally:
        HydraConfig.instance().cfg = None
