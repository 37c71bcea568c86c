"""Hydra multiruns on the digits: Optuna search, submitit (local) launcher, failures, the sweep table, wandb groups."""

import json
import os

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from simlearn.cli.collect import main as collect_main
from simlearn.config import config_dir
from simlearn.loggers import sweep_group
from simlearn.sweeps import collect

from .helpers import run_cli, run_main

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


def test_an_unknown_key_of_a_sweep_gets_the_closest_keys_as_a_single_run_does(tmp_path, capfd):
    result = run_main("simlearn.cli.train", "-m", "trainer.max_epoch=1,2", f"hydra.sweep.dir={tmp_path}", capfd=capfd)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: trainer.max_epoch=1,2: 'trainer.max_epoch' is not a key of the train config")
    assert "did you mean trainer.max_epochs" in lines[0] and "not in struct" not in result.stderr
    assert not list(tmp_path.iterdir()), "no job may start"


def test_every_value_of_a_sweep_is_checked_before_any_job_starts(tmp_path, capfd):
    # the mistake only in the third value of the second swept key: one single-run check per value finds it
    result = run_main(
        "simlearn.cli.train",
        "-m",
        "head.out_dim=8,16",
        "data=digits,mnist,digts",
        f"hydra.sweep.dir={tmp_path}",
        capfd=capfd,
    )
    assert result.returncode == 2
    assert "error: data=digits,mnist,digts: 'digts' is not an option of the config group data" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_sweep_with_a_failed_job_ends_with_one_line_naming_it(tmp_path, capfd):
    result = run_main(
        "simlearn.cli.train",
        "-m",
        "data=digits,cub200",
        "++trainer.fast_dev_run=true",
        "logger=none",
        "reports.plots=null",
        f"hydra.sweep.dir={tmp_path}",
        capfd=capfd,
        env={"SIMLEARN_DATA_DIR": str(tmp_path / "nowhere")},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 jobs of the sweep failed: #1 (data=cub200 "), result.stderr[-3000:]
    assert f"log {tmp_path / '1' / 'train.log'}" in last
    assert "CUB-200-2011 not found" in (tmp_path / "1" / "train.log").read_text()
    assert (tmp_path / "0" / "metrics.json").is_file(), "the finished job's results are kept"
    assert "HYDRA_FULL_ERROR" not in os.environ, "the sweep must leave the environment as it was"
