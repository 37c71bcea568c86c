"""The repository refers only to what exists: paths under configs/ and docs/, code that is called, no shims."""

import ast
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from simlearn.errors import UserError

from .helpers import REPO

#: ``configs/…`` and ``docs/…`` paths in text (not placeholders such as ``configs/<group>/`` or ``configs/{group}/``)
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|docs)/[\w./-]*[\w/])(?![\w<{*…])")


def referenced_paths() -> list[tuple[str, str]]:
    """Every (file, path) where a repository file names a path under configs/ or docs/."""
    files = [REPO / "README.md", *(REPO / "docs").rglob("*.md")]
    files += [
        p for folder in ("simlearn", "configs") for p in (REPO / folder).rglob("*") if p.suffix in {".py", ".yaml"}
    ]
    return [
        (str(file.relative_to(REPO)), path)
        for file in files
        for path in REPO_PATH.findall(file.read_text(encoding="utf-8"))
    ]


def test_the_scan_finds_the_paths_it_should():
    # the test below is only as good as the pattern: it must see these and leave placeholders alone
    text = (
        "see configs/loss/triplet.yaml, docs/architecture.md) and configs/loss/; not configs/<group>/ or configs/{g}/"
    )
    assert REPO_PATH.findall(text) == ["configs/loss/triplet.yaml", "docs/architecture.md", "configs/loss/"]
    assert ("simlearn/losses/tasks.py", "configs/loss/digits_multitask.yaml") in referenced_paths()


def test_every_configs_or_docs_path_a_repository_file_names_exists():
    missing = [f"{file}: {path}" for file, path in referenced_paths() if not (REPO / path.rstrip(".")).exists()]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


def _code_names(text: str) -> list[str]:
    """The names a Python file uses in code: its name tokens and the expressions of its f-strings (one string token
    before Python 3.12), not its other strings, docstrings or comments."""
    names = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NAME:
            names.append(token.string)
        elif token.type == tokenize.STRING and "f" in token.string.split("'")[0].split('"')[0].lower():
            names += [word for field in re.findall(r"\{([^{}]*)\}", token.string) for word in re.findall(r"\w+", field)]
    return names


def unused_definitions(root: Path = REPO) -> list[str]:
    """Module-level functions and classes of simlearn/ that nothing names but their own definition: no code (in
    simlearn/, tests/, scripts/), no config (a ``_target_``), no entry point, notebook or page."""
    uses: dict[str, int] = {}
    for path in [*root.joinpath("simlearn").rglob("*.py"), *root.joinpath("tests").rglob("*.py")]:
        for name in _code_names(path.read_text(encoding="utf-8")):
            uses[name] = uses.get(name, 0) + 1
    for path in root.joinpath("scripts").rglob("*.py"):
        for name in _code_names(path.read_text(encoding="utf-8")):
            uses[name] = uses.get(name, 0) + 1
    other = [*root.joinpath("configs").rglob("*.yaml"), *root.joinpath("notebooks").rglob("*.ipynb")]
    other += [root / "pyproject.toml", *root.joinpath("scripts").rglob("*.sh")]
    words = re.findall(r"\w+", "\n".join(p.read_text(encoding="utf-8") for p in other if p.is_file()))
    for name in words:
        uses[name] = uses.get(name, 0) + 1
    unused = []
    for path in sorted(root.joinpath("simlearn").rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef | ast.ClassDef):
                continue
            # a dunder (a module's __getattr__, …) is called by Python itself, never by name
            dunder = node.name.startswith("__") and node.name.endswith("__")
            if not dunder and uses.get(node.name, 0) <= 1:
                unused.append(f"{path.relative_to(root)}: {node.name}")
    return unused


def test_no_function_or_class_is_left_unused():
    assert not unused_definitions(), "defined but never used (remove them):\n" + "\n".join(unused_definitions())


def test_the_unused_scan_sees_a_function_named_only_in_a_docstring(tmp_path):
    for folder in ("simlearn", "tests", "scripts", "configs", "notebooks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "simlearn" / "a.py").write_text(
        'def used():\n    """Unlike :func:`dead`."""\n\n\ndef dead():\n    pass\n\n\ndef shown():\n    pass\n\n\n'
        'used(f"{shown()}")\n'
    )
    assert unused_definitions(tmp_path) == ["simlearn/a.py: dead"]


def test_no_shims_for_names_that_only_existed_inside_this_version():
    import simlearn.eval
    import simlearn.evaluation

    for name in ("PlotsReport", "ProbeReport", "ClassSimilarity", "class_similarity", "plot_circle"):
        assert not hasattr(simlearn.evaluation, name), f"simlearn.evaluation.{name}: it lives in simlearn.reports"
    assert simlearn.eval.__all__ == ["evaluate"], "load_checkpoint is simlearn.checkpoints'"


def test_a_checkpoint_config_without_preprocessing_is_refused_not_guessed():
    from simlearn.checkpoints import preprocessing_of

    config = OmegaConf.create(
        {"data": {"_target_": "simlearn.data.image_files.ImageFolderDataModule", "image_size": 32, "channels": 3}}
    )
    with pytest.raises(UserError, match="does not say how to prepare images"):
        preprocessing_of(config)


def test_the_run_log_handler_takes_no_argument_it_ignores(tmp_path):
    import logging

    from simlearn.run_dir import RunLogHandler

    assert "delay" not in inspect.signature(RunLogHandler).parameters, "it is always delayed: no delay argument"
    handler = RunLogHandler(str(tmp_path / "train.log"))
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "held", None, None))
    assert not (tmp_path / "train.log").exists(), "nothing is written before the run owns its dir"
    handler.open_log()
    handler.close()
    assert "held" in (tmp_path / "train.log").read_text()
