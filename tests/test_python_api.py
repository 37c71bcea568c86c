"""The Python entry (``simlearn.run``, ``simlearn.build.build_run``) and the builders' refusals of placeholders
left null: README "From Python"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

import simlearn
from simlearn.build import build_datamodule, build_loss, build_run, fill_preprocessing
from simlearn.config import compose_config
from simlearn.errors import UserError
from simlearn.train import train

from .helpers import REPO
from .photos import class_folders


def readme_section_code(title: str) -> list[str]:
    """The ```python blocks of the README section headed ``title`` (up to the next heading of any level)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(title)}\n", readme, flags=re.MULTILINE)
    assert start is not None, f"README.md has no section {title!r}"
    section, fenced = [], False
    for line in readme[start.end() :].splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):  # the next heading (a "# comment" inside code is not one)
            break
        section.append(line)
    return re.findall(r"^```python\n(.*?)^```", "".join(section), flags=re.MULTILINE | re.DOTALL)


def written_metrics(run_dir: Path) -> dict[str, float]:
    """The numbers of a run dir's metrics.json (it also names the test protocol, as text)."""
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written.pop("test/protocol") == "leave-one-out"
    return written


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.slow  # trains the digits for one epoch (~10 s on a busy 2-core machine)
def test_readme_from_python_example_runs(tmp_path, monkeypatch, capsys, caplog):
    """The README's example, as a user would paste it into a plain Python session: no Hydra run, relative paths."""
    blocks = readme_section_code("From Python")
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    assert not HydraConfig.initialized()
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)

    run = namespace["run"]
    out_dir = tmp_path / "outputs" / "notebook" / "digits"
    assert run.output_dir.resolve() == out_dir
    for name in ("metrics.json", "splits.json", "per_class.csv", "embeddings.npz", "config.yaml"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "checkpoints" / "last.ckpt").is_file()
    assert Path(run.best_path).resolve().parent == out_dir / "checkpoints"  # the best checkpoint was tested
    assert written_metrics(out_dir) == pytest.approx(run.metrics)
    assert run.metrics["train/epochs"] == 1.0
    assert 0.5 < run.metrics["test/recall@1"] <= 1.0  # one epoch on the digits: far above chance (0.1)
    assert run.trainer.current_epoch == 1 and run.datamodule is run.trainer.datamodule
    assert run.cfg.data.num_classes == 10  # filled from the training split

    test = namespace["test"]
    assert test.embeddings.shape == (len(run.datamodule.datasets["test"]), run.cfg.head.out_dim)
    printed = capsys.readouterr()
    assert f"test recall@1 {run.metrics['test/recall@1']:.3f}" in printed.out
    assert (
        "Tip:" not in printed.out + printed.err + caplog.text
    )  # Lightning's litlogger advert, quieted as in the commands

    built = namespace["built"]  # the second block: built, nothing trained or written
    assert built.cfg.head.out_dim == built.model.encoder.embedding_dim == built.model.encoder.backbone.out_features
    assert built.cfg.data.num_classes == 10
    assert built.trainer.current_epoch == 0 and not (tmp_path / "outputs" / "notebook" / "built").exists()


@pytest.mark.slow
def test_run_takes_a_composed_config_and_leaves_it_unchanged(tmp_path):
    cfg = compose_config(["train=false", "logger=none", "reports.plots=null", "reports.structure=null"])
    before = OmegaConf.to_yaml(cfg)
    run = simlearn.run(cfg, output_dir=tmp_path / "run")
    assert OmegaConf.to_yaml(cfg) == before  # the caller's config: not filled, no run dir written into it
    assert cfg.data.num_classes is None and run.cfg.data.num_classes == 10
    assert run.metrics["train/epochs"] == 0.0 and "test/recall@1" in run.metrics
    assert written_metrics(tmp_path / "run") == pytest.approx(run.metrics)


def test_a_run_without_a_run_dir_is_refused_in_one_line(tmp_path, monkeypatch):
    """Outside Hydra, paths.output_dir (Hydra's run dir) cannot resolve: said in one line before anything is built."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["logger=none"])
    for call in (lambda: train(cfg), lambda: simlearn.run(cfg), lambda: build_run(cfg)):
        with pytest.raises(UserError) as error:
            call()
        message = one_line(error)
        assert "paths.output_dir" in message and "output_dir=" in message
    assert list(tmp_path.iterdir()) == []


def test_run_raises_the_user_error_itself(tmp_path):
    """What a _target_ refuses reaches the caller as the UserError the command prints, not Hydra's
    InstantiationException around it (the CLI unwraps it the same way)."""
    with pytest.raises(UserError, match=r"^loss.lr_multiplier must be > 0, got 0") as error:
        simlearn.run(["loss=proxy_anchor", "loss.lr_multiplier=0", "logger=none"], output_dir=tmp_path / "run")
    one_line(error)


@pytest.fixture
def photos_config(tmp_path):
    root = tmp_path / "photos"
    class_folders(root, {"red": 8, "green": 8, "blue": 8}, size=16)
    return compose_config(
        ["data=image_folder", f"data.root={root}", "data.num_workers=0", "head=identity", "logger=none"],
        output_dir=tmp_path / "run",
    )


def test_build_datamodule_refuses_a_null_image_size(photos_config):
    """As composed, photo data leaves data.image_size null for the backbone; torchvision died on it (no len())."""
    assert photos_config.data.image_size is None
    with pytest.raises(UserError) as error:
        build_datamodule(photos_config.data)
    message = one_line(error)
    assert "data.image_size" in message and "simlearn.build.fill_preprocessing" in message

    fill_preprocessing(photos_config)  # what the message names: then the data builds
    assert isinstance(photos_config.data.image_size, int)
    assert build_datamodule(photos_config.data).num_train_classes == 3


@pytest.mark.parametrize(
    "overrides, named",
    [
        # softmax: num_classes ${data.num_classes}, null until the training split is known
        ([], ["loss.loss.num_classes", "data.num_classes", "simlearn.build.build_model"]),
        (["head=identity", "data.num_classes=10"], ["loss.loss.embedding_size", "head.out_dim", "build_model"]),
        (["data.num_classes=10", "loss.loss.num_classes=null"], ["loss.loss.num_classes=N"]),  # null in the config
    ],
)
def test_build_loss_refuses_an_unfilled_size_naming_the_key_and_its_filler(overrides, named):
    with pytest.raises(UserError) as error:
        build_loss(compose_config(overrides))
    message = one_line(error)
    assert all(name in message for name in named), message


def test_build_run_fills_every_placeholder(photos_config, tmp_path):
    built = build_run(photos_config)
    assert isinstance(built.cfg.data.image_size, int)
    assert built.cfg.data.num_classes == built.datamodule.num_train_classes == 3
    assert built.cfg.head.out_dim == built.model.encoder.embedding_dim
    build_loss(built.cfg)  # nothing left null for the loss
    assert not (tmp_path / "run").exists()  # building writes nothing
