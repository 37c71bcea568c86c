from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (README "Tests"): one thread each, here and in the commands the tests
    # start, so that workers do not oversubscribe the cores (OpenMP threads spinning against each other made a
    # 5 s training take minutes on a loaded 2-core machine). Set before torch is imported.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

from typing import TYPE_CHECKING  # noqa: E402

import pytest  # noqa: E402  (after the thread settings above)

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

    from simlearn.serve import SearchService

REPO = Path(__file__).resolve().parents[1]
#: Real MNIST (raw IDX files) lives beside the checkout on the project's machines and in CI.
MNIST_ROOT = Path(os.environ.get("SIMLEARN_TEST_MNIST_ROOT", REPO.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first, in collection order otherwise. pytest-xdist hands tests out in this order, one at a time
    as a worker frees up (``--maxschedchunk=1`` in pyproject.toml; by default it gives each worker a block of a
    quarter of the suite up front, and one worker ran all 23 slow tests while the other sat idle for 3 minutes)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path_factory, monkeypatch):
    """wandb never reaches the network in tests and writes only into a temp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    # nor does its error reporting (Sentry): a run whose online start failed reported it to sentry.io at exit, which
    # held the test 22 s on a machine without internet
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def mnist_root() -> Path:
    if not (MNIST_ROOT / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists():
        pytest.skip(f"real MNIST not found at {MNIST_ROOT}/MNIST/raw (set SIMLEARN_TEST_MNIST_ROOT)")
    return MNIST_ROOT


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished two-epoch digits run made by the command line (run dir with .hydra/, csv curves, checkpoints).
    What the command printed is beside the run dir, in ``stdout.txt`` and ``stderr.txt`` (``trained_run_console``).

    Read-only for tests: copy it (``shutil.copytree``) before resuming or writing into it.
    """
    from .helpers import run_cli

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_cli("train.py", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "reports.plots=null")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir.parent / "stdout.txt").write_text(result.stdout)
    (run_dir.parent / "stderr.txt").write_text(result.stderr)
    return run_dir


@pytest.fixture(scope="session")
def trained_run_console(trained_run) -> tuple[str, str]:
    """``(stdout, stderr)`` of the command that made ``trained_run``: what a user reads in the console."""
    return (trained_run.parent / "stdout.txt").read_text(), (trained_run.parent / "stderr.txt").read_text()


@pytest.fixture
def pairs_csv(tmp_path):
    """60 pairs of generated photos of 4 colours; similar = same colour (the pairs data's and the pair training's
    tests)."""
    from .photos import class_folders, distinct_pairs, write_csv

    files = class_folders(tmp_path / "photos", {"a": 8, "b": 8, "c": 8, "d": 8})
    # distinct pairs: the data drops repeated pairs, which random draws would give
    rows = [[str(a.relative_to(tmp_path)), str(b.relative_to(tmp_path)), s] for a, b, s in distinct_pairs(files, 60)]
    return write_csv(tmp_path / "pairs.csv", ["path_a", "path_b", "similar"], rows)


# ---------------------------------------------------------------- the serve tests' galleries and services
# Session-scoped (built once per worker) because several test files use them: the services embed their galleries
# with the trained checkpoint, and the real commands of tests/test_serve_command.py reuse split_service's cache.
# Read-only for tests: build a service of your own (open_service) to change one.


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory) -> Path:
    """scikit-learn's digits as PNG files (tests/serving.py), one broken file, and a secret file beside the folder."""
    from .serving import write_digit_gallery

    root = tmp_path_factory.mktemp("serve_gallery")
    write_digit_gallery(root / "gallery")
    (root / "gallery" / "3" / "broken.png").write_bytes(b"this is not a png")  # skipped and counted
    (root / "secret.txt").write_text("TOPSECRET: outside the gallery\n")
    return root / "gallery"


@pytest.fixture(scope="session")
def queries_dir(tmp_path_factory) -> Path:
    from .serving import PER_CLASS, write_digit_gallery

    folder = tmp_path_factory.mktemp("serve_queries")
    write_digit_gallery(folder, per_class=1, offset=PER_CLASS)  # digits that are not in the gallery
    return folder


@pytest.fixture(scope="session")
def service(trained_run, gallery_dir, tmp_path_factory) -> SearchService:
    from simlearn.serve import open_service

    from .serving import serve_config

    cache = tmp_path_factory.mktemp("serve_cache") / "cache"
    return open_service(serve_config(trained_run / "checkpoints" / "last.ckpt", gallery_dir, cache))


@pytest.fixture(scope="session")
def client(service) -> TestClient:
    from fastapi.testclient import TestClient

    from simlearn.serve import create_app

    return TestClient(create_app(service))


@pytest.fixture(scope="session")
def split_service(trained_run, tmp_path_factory) -> SearchService:
    """The one-command service: a checkpoint and no gallery (its data's test split)."""
    from simlearn.serve import open_service

    from .serving import serve_config

    cache = tmp_path_factory.mktemp("serve_split") / "cache"
    return open_service(serve_config(trained_run / "checkpoints" / "last.ckpt", None, cache))


@pytest.fixture(scope="session")
def split_client(split_service) -> TestClient:
    from fastapi.testclient import TestClient

    from simlearn.serve import create_app

    return TestClient(create_app(split_service))


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> dict:
    """The trained digits checkpoint exported as a model folder, and a few digit PNGs (the model folder's and the
    export's tests). Read-only for tests."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from simlearn.export import export

    from .helpers import export_cfg

    root = tmp_path_factory.mktemp("model_folder")
    ckpt = next((trained_run / "checkpoints").glob("best-epoch*.ckpt"))
    folder = export(export_cfg(ckpt, root / "model", root / "run"))
    digits = load_digits()
    pngs = []
    for index in (0, 1, 2, 3, 500):
        path = root / "images" / f"{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((digits.images[index] / 16 * 255).round().astype(np.uint8)).save(path)
        pngs.append(path)
    return {"root": root, "ckpt": ckpt, "folder": folder, "run": trained_run, "pngs": pngs}


@pytest.fixture(scope="session")
def checkpoint_folders(tmp_path_factory) -> dict:
    """A one-epoch digits checkpoint, a query folder (one PNG per digit) and a gallery folder (200 PNGs in class
    folders, plus a broken PNG and a text file): the embed, search, export and command tests'. Read-only for tests."""
    import numpy as np
    from sklearn.datasets import load_digits

    from simlearn.config import compose_config
    from simlearn.train import train

    from .helpers import save_digit

    root = tmp_path_factory.mktemp("usage")
    train(compose_config(["logger=none", "trainer.max_epochs=1"], output_dir=root / "run"))  # default reports: plots
    digits = load_digits()
    for i in range(10):
        index = int(np.flatnonzero(digits.target == i)[0])
        save_digit(root / "query" / str(i) / f"{index}.png", digits.images[index])
    for index in range(100, 300):
        save_digit(root / "gallery" / str(digits.target[index]) / f"{index}.png", digits.images[index])
    (root / "gallery" / "3" / "broken.png").write_bytes(b"not a png")
    (root / "gallery" / "notes.txt").write_text("not an image")
    return {
        "root": root,
        "run": root / "run",
        "ckpt": next((root / "run" / "checkpoints").glob("best-epoch*.ckpt")),
        "query": root / "query",
        "gallery": root / "gallery",
    }
