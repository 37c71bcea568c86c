"""wandb never prompts or hangs: without credentials it logs offline and says how to sync."""

from pathlib import Path

from simlearn.loggers import wandb_has_credentials

from .helpers import run_cli


def test_no_credentials_means_offline_with_a_sync_hint(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "WANDB_API_KEY": "",
        "WANDB_MODE": "",
        "NETRC": str(home / ".netrc"),
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
    }
    result = run_cli(
        "train.py", "logger=wandb", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "logging offline" in output and "wandb sync" in output
    assert list((tmp_path / "run").rglob("offline-run-*")), "no offline wandb run was written"
    assert (tmp_path / "run" / "metrics.json").exists()


def test_credentials_are_found_in_env_and_netrc(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_has_credentials()
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_has_credentials()
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "abc")
    assert wandb_has_credentials()
