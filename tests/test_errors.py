"""Bad input from the command line: one clear message, a non-zero exit, no traceback, no checkpoint lost."""

import shlex

import pytest

from .helpers import run_cli, run_main


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"


def test_unknown_group_option(tmp_path):
    """End to end (a real process, before torch loads: about a second): one line, exit 2."""
    result = run_cli("train.py", "loss=nonexistent", f"hydra.run.dir={tmp_path}")
    assert_clean_failure(result, "loss=nonexistent", "config group loss", "contrastive", "multitask", "softmax")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [line for line in result.stderr.splitlines() if line.strip()][-1:]


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (["trainer.max_epochs=abc"], ["trainer.max_epochs must be an integer", "'abc'"]),
        (["head.out_dim=0"], ["head.out_dim must be an integer ≥ 1", "got 0"]),
        (["data.classes=[3]"], ["1 class", "at least 2 classes", "data.classes"]),
        (
            ["data=mnist", "data.root=/nonexistent/simlearn-data", "data.download=false"],
            ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "MNIST/raw", "data.root"],
        ),
        (["data.label_field=colour"], ["data.label_field='colour'", "digit", "parity"]),
        (["data.m_per_class=3"], ["data.m_per_class=3", "multiple of m_per_class"]),
    ],
    ids=["wrong-type", "embedding-dim-0", "single-class", "missing-data-dir", "unknown-label-field", "bad-sampler"],
)
def test_user_mistakes_exit_with_one_message(tmp_path, overrides, fragments, capfd):
    result = run_main("simlearn.cli.train", *overrides, f"hydra.run.dir={tmp_path}", "logger=none", capfd=capfd)
    assert_clean_failure(result, "error:", *fragments)
    assert result.returncode == 2
    assert not (tmp_path / "checkpoints").exists()


def test_existing_checkpoints_are_not_overwritten(tmp_path, capfd):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"precious")
    result = run_main(
        "simlearn.cli.train", f"hydra.run.dir={tmp_path}", "logger=none", "trainer.max_epochs=1", capfd=capfd
    )
    assert_clean_failure(result, "already holds the results of another run", "last.ckpt", "ckpt_path=last")
    assert (checkpoints / "last.ckpt").read_bytes() == b"precious"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]


def test_eval_rejects_missing_and_foreign_checkpoints(tmp_path, capfd):
    missing = f"ckpt_path={tmp_path}/missing.ckpt"
    result = run_main("simlearn.cli.eval", missing, f"hydra.run.dir={tmp_path}/a", capfd=capfd)
    assert_clean_failure(result, "is not a file")
    foreign = tmp_path / "foreign.ckpt"
    foreign.write_bytes(b"not a checkpoint")
    result = run_main("simlearn.cli.eval", f"ckpt_path={foreign}", f"hydra.run.dir={tmp_path}/b", capfd=capfd)
    assert_clean_failure(result, "not a readable PyTorch checkpoint")


def test_error_lines_keep_their_brackets(capsys):
    """A message that quotes a list or an extra is text: rich markup would have eaten '[zebra]' and '[serve]'."""
    from simlearn.cli.common import print_error

    print_error("set data.probe_classes=[zebra] or pip install 'simlearn[serve]'.")
    assert "data.probe_classes=[zebra] or pip install 'simlearn[serve]'." in capsys.readouterr().err


@pytest.mark.parametrize(
    "module,override,closest,valid",
    [
        ("simlearn.cli.train", "loss=tripplet", "loss=triplet", ["softmax", "xbm_triplet"]),
        ("simlearn.cli.train", "data=digts", "data=digits", ["mnist", "cub200"]),
        ("simlearn.cli.train", "hparams_search=optunna", "hparams_search=optuna", ["optuna_triplet"]),
        ("simlearn.cli.train", "hydra/launcher=locl", "hydra/launcher=local", ["slurm", "basic"]),
        ("simlearn.cli.eval", "data=mnst", "data=mnist", ["digits"]),
        ("simlearn.cli.eval", "evaluation=retreival", "evaluation=retrieval", ["pairs"]),
        ("simlearn.cli.embed", "data=image_foldr", "data=image_folder", ["image_csv"]),
        ("simlearn.cli.search", "paths=defualt", "paths=default", []),
        ("simlearn.cli.export", "paths=defalt", "paths=default", []),
        ("simlearn.cli.serve", "paths=dfault", "paths=default", []),
    ],
)
def test_a_misspelt_group_option_is_one_line_with_the_closest_and_valid_options(
    tmp_path, capfd, module, override, closest, valid
):
    result = run_main(module, override, f"hydra.run.dir={tmp_path}", capfd=capfd)
    assert result.returncode == 2
    assert_clean_failure(result, f"error: {override}:", f"did you mean {closest}", "Valid options:", *valid)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Config search path" not in result.stderr


def test_a_misspelt_option_of_a_sweep_is_one_line(tmp_path, capfd):
    result = run_main("simlearn.cli.train", "-m", "loss=triplet,tripplet", f"hydra.sweep.dir={tmp_path}", capfd=capfd)
    assert result.returncode == 2
    assert_clean_failure(result, "error: loss=triplet,tripplet: 'tripplet' is not an option", "loss=triplet")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not list(tmp_path.iterdir()), "no job may start"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        (
            "faiss_params=efSearch=128",
            ["'faiss_params=efSearch=128' is not an override Hydra can read", "\"faiss_params='efSearch=128'\""],
        ),
        (
            "faiss_index=IVF4,Flat",
            ["has a bare comma, which Hydra reads as a sweep", "\"faiss_index='IVF4,Flat'\"", "add -m"],
        ),
        # an apostrophe: Hydra's double-quoted string, quoted for the shell
        ("gallery=/photos/o'neil", ["is not an override Hydra can read", "'gallery=\"/photos/o'\"'\"'neil\"'"]),
        ("hydra.run.dir=/runs/a,b", ["has a bare comma", "\"hydra.run.dir='/runs/a,b'\""]),
    ],
)
def test_an_override_hydra_cannot_read_is_one_line_with_the_quoted_form(tmp_path, capfd, override, fragments):
    result = run_main("simlearn.cli.organise", override, "embedder=pixels", f"hydra.run.dir={tmp_path}", capfd=capfd)
    assert_clean_failure(result, *fragments)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # the quoted form it names is read as the one value
    from simlearn.cli.common import override_syntax_message

    (argument,) = shlex.split(fragments[1])  # what the shell passes on for the form it names
    assert override_syntax_message([argument]) is None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (parsed,) = OverridesParser.create().parse_overrides([argument])
    assert parsed.value() == override.split("=", 1)[1]  # the value as written
