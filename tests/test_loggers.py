"""wandb never prompts or hangs: without credentials it logs offline and says how to sync; with credentials but
no server to reach it falls back to offline after a short, bounded wait. No test reaches a real host: every
subprocess points WANDB_BASE_URL at a local port, and wandb's error reporting is off (tests/conftest.py)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import wandb

import simlearn.loggers
from simlearn.loggers import wandb_has_credentials, wandb_logger

from .helpers import REPO, run_cli

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the 40 characters of a W&B API key


def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str, **extra: str) -> dict[str, str]:
    """A subprocess environment without the developer's wandb login and without the tests' WANDB_MODE=offline
    (wandb rejects an empty WANDB_MODE, so it is removed, not blanked), pointed at ``base_url``."""
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_SILENT")  # what a user sees (and waits for)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {
        "HOME": str(home),
        "NETRC": str(home / ".netrc"),
        "WANDB_CONFIG_DIR": str(home / ".config" / "wandb"),
        "WANDB_DIR": str(tmp_path / "wandb-dir"),
        "WANDB_BASE_URL": base_url,
        "WANDB_API_KEY": "",
        **extra,
    }


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a local port that accepts connections (the kernel's backlog) but never answers: a network that
    swallows requests, the worst case for a client (refused connections fail faster)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(128)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.slow
def test_no_credentials_means_offline_with_a_sync_hint(tmp_path: Path, silent_server: str, monkeypatch):
    env = isolated_env(tmp_path, monkeypatch, silent_server)
    overrides = ["logger=wandb", "trainer.max_epochs=1", "data.max_train=300", "reports.plots=null"]
    result = run_cli("train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "logging offline" in output and "wandb sync" in output
    assert list((tmp_path / "run").rglob("offline-run-*")), "no offline wandb run was written"
    assert (tmp_path / "run" / "metrics.json").exists()


def run_timed(*args: str, env: dict[str, str], timeout: float) -> tuple[int, list[tuple[float, str]]]:
    """Run ``python *args`` in the repo; its exit status and output lines (stdout and stderr, unbuffered), each with
    the seconds since the start at which it arrived. Killed after ``timeout`` seconds."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    start = time.monotonic()
    try:
        lines = [(time.monotonic() - start, line.rstrip("\n")) for line in process.stdout]
        return process.wait(), lines
    finally:
        timer.cancel()


@pytest.mark.slow
def test_a_key_without_a_reachable_server_falls_back_to_offline_within_a_bound(
    tmp_path: Path, silent_server: str, monkeypatch
):
    """Before: wandb.init waited 90 s (plus its login checks), then a traceback, and nothing was trained."""
    # WANDB_INIT_TIMEOUT reaches logger.wandb.init_timeout through configs/logger/wandb.yaml
    env = isolated_env(tmp_path, monkeypatch, silent_server, WANDB_API_KEY=FAKE_KEY, WANDB_INIT_TIMEOUT="2")
    run_dir = tmp_path / "run"
    overrides = ["logger=wandb", "trainer.max_epochs=1", "data.max_train=300"]
    overrides += ["reports.plots=null", f"hydra.run.dir={run_dir}"]
    # ~25 s on an idle machine: the start-up, and wandb's wait (below)
    returncode, lines = run_timed("train.py", *overrides, env=env, timeout=150)
    output = "\n".join(line for _, line in lines)
    assert returncode == 0, output[-3000:]
    assert "Traceback" not in output
    fallback = [(t, line) for t, line in lines if "could not start an online run" in line]
    assert len(fallback) == 1, output[-3000:]
    assert all(word in fallback[0][1] for word in ("logging offline", "wandb sync", "init_timeout=2 s"))
    assert list(run_dir.rglob("offline-run-*")), "no offline wandb run was written"
    assert "test/recall@1" in json.loads((run_dir / "metrics.json").read_text())
    # the wait for wandb, from its first line to the fallback: init_timeout plus wandb's own login checks (two
    # requests of at most 5 s each), with slack for a busy machine; wandb alone took 109 s
    stall = fallback[0][0] - next(t for t, line in lines if line.startswith("wandb:"))
    assert stall < 30, f"wandb held training up for {stall:.0f} s"
    assert lines[-1][0] < 120, f"the run took {lines[-1][0]:.0f} s"


# -- finding credentials ------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_wandb(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """No credentials from the developer's machine, and wandb's settings re-read from this test's environment
    (wandb caches them per process). Yields the netrc path, not yet written."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setattr(simlearn.loggers, "_online_failure", None)
    wandb.teardown()
    yield tmp_path / "netrc"
    wandb.teardown()


def write_netrc(path: Path, machine: str) -> None:
    path.write_text(f"machine {machine}\n  login user\n  password {FAKE_KEY}\n")
    path.chmod(0o600)


def test_wandb_login_for_the_default_host_is_found(fresh_wandb: Path):
    """`wandb login` writes the netrc entry for wandb's own default host (not necessarily api.wandb.ai)."""
    assert not wandb_has_credentials()
    write_netrc(fresh_wandb, urlsplit(wandb.Settings().base_url).netloc)
    assert wandb_has_credentials()


def test_an_api_wandb_ai_entry_counts_when_wandb_itself_uses_it(fresh_wandb: Path):
    """What counts is whatever wandb would use: this wandb serves its default host from api.wandb.ai's entry."""
    from wandb.sdk.lib import wbauth

    write_netrc(fresh_wandb, "api.wandb.ai")
    expected = wbauth.read_netrc_auth(host=wandb.Settings().base_url) is not None
    assert wandb_has_credentials() is expected


def test_a_custom_host_needs_its_own_entry(fresh_wandb: Path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.internal:8443")
    wandb.teardown()
    write_netrc(fresh_wandb, urlsplit(wandb.Settings().base_url).netloc)  # the default host's: not this one
    assert not wandb_has_credentials()
    write_netrc(fresh_wandb, "wandb.example.internal:8443")  # what `wandb login --host …:8443` writes
    assert wandb_has_credentials()


def test_the_host_of_wandb_login_host_is_used(fresh_wandb: Path, tmp_path: Path):
    """`wandb login --host URL` keeps the host in wandb's settings file and the key in netrc."""
    settings = tmp_path / "wandb-config" / "settings"
    settings.parent.mkdir()
    settings.write_text("[default]\nbase_url = https://wandb.example.internal\n")
    write_netrc(fresh_wandb, "wandb.example.internal")
    assert wandb_has_credentials()


def test_a_key_in_the_environment_counts(fresh_wandb: Path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_has_credentials()


def test_without_credentials_the_logger_is_offline_whatever_wandb_loaded_before(
    fresh_wandb: Path, tmp_path: Path, monkeypatch
):
    """The offline choice is passed to wandb.init itself: an environment variable set after wandb has read its
    settings would be ignored, and wandb.init would then ask for a key."""
    monkeypatch.delenv("WANDB_MODE")
    from wandb.sdk import wandb_setup

    assert wandb_setup.singleton().settings.mode == "online"  # settings read now, before the logger decides
    logger = wandb_logger(save_dir=str(tmp_path / "run"), project="simlearn")
    assert logger._wandb_init["mode"] == "offline"
    assert logger._wandb_init["settings"].init_timeout == 20


def test_a_refused_connection_falls_back_to_an_offline_run_in_process(
    fresh_wandb: Path, tmp_path: Path, monkeypatch, caplog
):
    """The other way a server is unreachable: nothing listens on its port (refused at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # free once closed: connections to it are refused
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port}")
    wandb.teardown()
    logger = wandb_logger(save_dir=str(tmp_path / "run"), project="simlearn", init_timeout=2)
    assert "mode" not in logger._wandb_init  # credentials found: an online run is tried first
    start = time.monotonic()
    run = logger.experiment
    try:
        assert run.settings.mode == "offline" and "offline-run-" in run.dir
        assert time.monotonic() - start < 30
    finally:
        run.finish()
    # the next run of this process (a job of a sequential sweep) does not wait for the same server again
    later = wandb_logger(save_dir=str(tmp_path / "later"), project="simlearn", init_timeout=2)
    with caplog.at_level(logging.WARNING, logger="simlearn.loggers"):
        run = later.experiment
    try:
        assert run.settings.mode == "offline"
        assert "an earlier run in this process could not start online" in caplog.text
    finally:
        run.finish()
