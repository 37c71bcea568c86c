"""A run dir belongs to one run: nothing overwritten, nothing mixed, resumes continue the run that was."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from simlearn.build import build_trainer
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.run_dir import claim_run_dir

from .helpers import REPO, run_cli, run_main
from .test_errors import assert_clean_failure


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (lock file aside) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".simlearn.lock"
    }


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    return to


def csv_rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def best_state(checkpoint_path: Path) -> dict:
    callbacks = torch.load(checkpoint_path, map_location="cpu", weights_only=False)["callbacks"]
    return next(state for key, state in callbacks.items() if "'monitor': 'val/recall@1'" in key)


# -- nothing overwritten ---------------------------------------------------------------------------------------------
def test_eval_never_writes_into_a_training_run_dir(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    result = run_cli("-m", "simlearn.cli.eval", f"ckpt_path={run}/checkpoints/last.ckpt", f"hydra.run.dir={run}")
    assert_clean_failure(result, "already holds the results of another run", "metrics.json", "hydra.run.dir")
    assert result.returncode == 2
    assert snapshot(run) == before


def test_a_refused_training_run_leaves_the_dir_as_it_was(trained_run, tmp_path, capfd):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", "trainer.max_epochs=7", "seed=3", capfd=capfd)
    assert_clean_failure(result, "already holds the results", "ckpt_path=last")
    assert snapshot(run) == before, "the refused run rewrote files of the run it was refused from (.hydra/, log)"


@pytest.mark.slow
def test_a_second_run_into_a_dir_in_use_stops_with_one_line(tmp_path):
    with claim_run_dir(tmp_path, "train"):  # this process holds the dir, as a running training would
        result = run_cli("train.py", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=1", "logger=none")
    assert_clean_failure(result, "is in use by another simlearn run", f"pid {__import__('os').getpid()}")
    assert result.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the holder's lock goes when it ends, nothing else is left"


@pytest.mark.slow
def test_two_commands_started_at_once_never_share_a_dir(tmp_path):
    command = [sys.executable, "train.py", f"hydra.run.dir={tmp_path}", "trainer.max_epochs=2", "logger=none"]
    processes = [
        subprocess.Popen([*command, f"seed={seed}", "reports.plots=null"], cwd=REPO, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    errors = [process.communicate(timeout=240)[1] for process in processes]
    codes = sorted(process.returncode for process in processes)
    assert codes == [0, 2], errors
    loser = errors[[process.returncode for process in processes].index(2)]
    assert "in use by another simlearn run" in loser or "already holds the results" in loser
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(names) == 2 and "last.ckpt" in names and names[0].startswith("best-epoch"), names
    winner_seed = yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"]
    assert yaml.safe_load((tmp_path / ".hydra" / "overrides.yaml").read_text()).count(f"seed={winner_seed}") == 1


def test_the_lock_file_is_removed_when_the_run_ends(trained_run, tmp_path):
    assert not (trained_run / ".simlearn.lock").exists(), "a finished training run left its lock"
    lock = tmp_path / ".simlearn.lock"
    with claim_run_dir(tmp_path, "eval"):
        assert "simlearn-eval, pid" in lock.read_text()
    assert not lock.exists()
    with pytest.raises(RuntimeError), claim_run_dir(tmp_path, "eval"):
        raise RuntimeError("the run failed")
    assert not lock.exists(), "a failed run left its lock"
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="already holds the results"), claim_run_dir(tmp_path, "eval"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"], "a refused run left its lock"


def test_a_run_removes_only_the_lock_file_it_holds(tmp_path):
    lock = tmp_path / ".simlearn.lock"
    with claim_run_dir(tmp_path, "eval"):
        lock.unlink()  # someone removed this run's lock and another process made its own
        lock.write_text("simlearn-train, pid 1 on elsewhere")
    assert lock.read_text() == "simlearn-train, pid 1 on elsewhere"


def test_a_process_that_locked_a_removed_lock_file_locks_the_new_one(tmp_path):
    """A claimant that opened the lock file just before its run removed it holds a lock on a file no longer in the
    dir: it must lock the file at the path instead, or two runs would own the dir."""
    import fcntl

    from simlearn.run_dir import _lock

    lock = tmp_path / ".simlearn.lock"
    lock.write_text("")
    opened = open(lock, "a+")  # noqa: SIM115 (the other claimant's handle on the old file)
    lock.unlink()
    real_open = open

    def stale_first(path, mode="r", *args, **kwargs):
        # the first open returns the handle on the removed file, as if opened just before the removal
        nonlocal opened
        if opened is not None and Path(path) == lock:
            handle, opened = opened, None
            return handle
        return real_open(path, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("builtins.open", stale_first)
        handle = _lock(lock, tmp_path)
    try:
        assert lock.exists() and os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        with real_open(lock, "a+") as other, pytest.raises(OSError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        handle.close()


# -- resume ----------------------------------------------------------------------------------------------------------
def test_resume_continues_the_saved_config_with_explicit_overrides_on_top(trained_run, tmp_path, capfd):
    run = copy_run(trained_run, tmp_path / "run")
    result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", "ckpt_path=last", "reports.plots=null", capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overrides on top: reports.plots=null" in result.stdout + result.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["max_epochs"] == 2, "resuming must not fall back to the default 30 epochs"
    assert yaml.safe_load((run / "metrics.json").read_text())["train/epochs"] == 2

    overrides = ["ckpt_path=last", "trainer.max_epochs=3", "reports.plots=null"]
    result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", *overrides, capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overrides on top: trainer.max_epochs=3 reports.plots=null" in result.stdout + result.stderr
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 3
    assert yaml.safe_load((run / "metrics.json").read_text())["train/epochs"] == 3
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    resumes = yaml.safe_load((run / ".hydra" / "resumes.yaml").read_text())
    assert [r["overrides"] for r in resumes] == [
        ["ckpt_path=last", "reports.plots=null"],
        ["ckpt_path=last", "trainer.max_epochs=3", "reports.plots=null"],
    ]


def test_resume_refuses_to_change_what_the_run_trains(trained_run, tmp_path, capfd):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    for change in ("loss=triplet", "head.out_dim=8"):
        result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", "ckpt_path=last", change, capfd=capfd)
        assert_clean_failure(result, change, "would change what the resumed run trains", "hydra.run.dir")
    assert snapshot(run) == before


def test_resume_from_a_moved_run_dir_behaves_as_in_place(trained_run, tmp_path, capfd):
    moved = copy_run(trained_run, tmp_path / "elsewhere" / "moved")
    original_best = best_state(trained_run / "checkpoints" / "last.ckpt")
    overrides = ["ckpt_path=last", "trainer.max_epochs=4", "reports.plots=null"]
    result = run_main("simlearn.cli.train", f"hydra.run.dir={moved}", *overrides, capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert "last.ckpt" in names and not any("-v" in name for name in names), names
    assert len([name for name in names if name.startswith("best-")]) == 1, names
    last = torch.load(moved / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 3, "last.ckpt must hold the newest epoch, or a second resume goes back"
    best = best_state(moved / "checkpoints" / "last.ckpt")
    assert float(best["best_model_score"]) >= float(original_best["best_model_score"]), "the best score was forgotten"
    assert Path(best["best_model_path"]).parent == (moved / "checkpoints").resolve()
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_resume_after_kill_keeps_the_curves_from_before(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "train.py", f"hydra.run.dir={run}", "trainer.max_epochs=8", "reports.plots=null",
               "++logger.csv.flush_logs_every_n_steps=1"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if last.is_file() and torch.load(last, weights_only=False)["epoch"] >= 1:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed; make it longer"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    step = torch.load(last, weights_only=False)["global_step"]
    before = [row for row in csv_rows(run) if int(row["step"]) <= step]
    assert any(row.get("val/recall@1") for row in before), "no validation rows were on disk before the kill"

    result = run_cli("train.py", f"hydra.run.dir={run}", "ckpt_path=last", "reports.plots=null")
    assert result.returncode == 0, result.stderr[-3000:]
    after = csv_rows(run)
    kept = [{k: v for k, v in row.items() if v} for row in after[: len(before)]]
    assert kept == [{k: v for k, v in row.items() if v} for row in before], "curves from before the kill were lost"
    val_epochs = [int(row["epoch"]) for row in after if row.get("val/recall@1")]
    assert val_epochs == list(range(8)), f"each epoch's validation once, in order: {val_epochs}"


# -- smoke runs, strategies, required values, unknown keys, read-only dirs ---------------------------------------------
def test_smoke_run_succeeds(tmp_path, capfd):
    overrides = ["++trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}", "reports.plots=null"]
    result = run_main("simlearn.cli.train", *overrides, capfd=capfd)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = yaml.safe_load((tmp_path / "metrics.json").read_text())
    assert metrics["val/best_recall@1"] == metrics["val/recall@1"]


def test_smoke_sweep_succeeds(tmp_path, capfd):
    result = run_main(
        "simlearn.cli.train", "-m", "hparams_search=optuna", "++trainer.fast_dev_run=true", "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}", "reports.plots=null", "logger=none", capfd=capfd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(tmp_path.glob("*/metrics.json"))) == 2
    assert (tmp_path / "optimization_results.yaml").exists()


@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_fork", "ddp_notebook"])
def test_strategies_that_keep_results_in_child_processes_are_refused_outside_training(tmp_path, strategy):
    # training runs the whole run in those processes (tests/test_distributed.py); a Trainer for anything else refuses
    cfg = compose_config(["trainer=ddp", f"trainer.strategy={strategy}"], output_dir=tmp_path)
    with pytest.raises(
        UserError, match=f"trainer.strategy={strategy} starts its processes.*only training.*trainer=ddp"
    ):
        build_trainer(cfg, callbacks=[], loggers=[])


@pytest.mark.parametrize(
    "module,args,missing",
    [
        ("simlearn.cli.eval", [], "ckpt_path"),
        ("simlearn.cli.embed", [], "ckpt_path"),
        ("simlearn.cli.export", [], "ckpt_path"),
        ("simlearn.cli.search", ["query=q.png", "gallery=g/"], "ckpt_path"),
        ("simlearn.cli.search", ["ckpt_path=x.ckpt", "gallery=g/"], "query"),
    ],
)
def test_missing_required_values_are_asked_for_in_one_line(tmp_path, module, args, missing):
    result = run_cli("-m", module, *args, f"hydra.run.dir={tmp_path}")
    assert_clean_failure(result, f"missing required value {missing}", f"{missing}=")
    assert result.returncode == 2


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("foo=bar", ["'foo' is not a key of the train config", "+foo=bar", "optimizer"]),
        ("trainer.max_epoch=3", ["did you mean trainer.max_epochs", "+trainer.max_epoch=3"]),
    ],
)
def test_unknown_keys_name_the_key_and_valid_ones(tmp_path, override, fragments):
    result = run_cli("train.py", override, f"hydra.run.dir={tmp_path}")
    assert_clean_failure(result, *fragments)
    assert result.returncode == 2


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process really cannot write into: chmod 555 (not for root), else a read-only system folder."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/fs"), Path("/proc/self")):
        try:
            with tempfile.NamedTemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    pytest.skip("no unwritable folder on this machine (root without a read-only /sys)")


@pytest.mark.parametrize("where", ["run dir", "checkpoint folder"])
def test_read_only_dirs_are_refused_before_training(tmp_path, where, capfd):
    read_only = unwritable_dir(tmp_path)
    run = tmp_path / "run"
    if where == "run dir":
        run.symlink_to(read_only)
    else:
        run.mkdir()
        (run / "checkpoints").symlink_to(read_only)
    result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", "logger=none", "trainer.max_epochs=1", capfd=capfd)
    assert_clean_failure(result, f"the {where} ", "is not writable", "hydra.run.dir")
    assert result.returncode == 2
    assert not (run / "config.yaml").exists()


def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train.py", f"hydra.run.dir={blocker}/run", "logger=none")
    assert_clean_failure(result, "cannot be created", "hydra.run.dir=")
    assert result.returncode == 2
    assert blocker.read_text() == "not a folder"


def test_training_into_another_commands_dir_is_refused_without_the_resume_hint(tmp_path, capfd):
    run = tmp_path / "organised"
    run.mkdir()
    (run / "organise.json").write_text("{}")
    (run / "clusters.csv").write_text("item\n")
    result = run_main("simlearn.cli.train", f"hydra.run.dir={run}", "logger=none", capfd=capfd)
    assert_clean_failure(result, "already holds the results of another run", "organise.json, clusters.csv")
    assert "ckpt_path=last" not in result.stderr and "Choose another hydra.run.dir=DIR" in result.stderr
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["clusters.csv", "organise.json"]
