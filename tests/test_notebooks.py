"""The notebooks run top to bottom (a short training run each) and show the figures they promise."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, workdir: Path):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return notebook


def outputs(notebook, mime: str) -> list[str]:
    cells = [cell.get("outputs", []) for cell in notebook.cells]
    return [out["data"][mime] for cell in cells for out in cell if mime in out.get("data", {})]


def run_dir(log_dir: Path, prefix: str) -> Path:
    (found,) = (log_dir / "notebooks").glob(f"{prefix}-*")
    return found


@pytest.mark.slow
def test_mnist_multitask_notebook(tmp_path, monkeypatch, mnist_root):
    monkeypatch.setenv("SIMLEARN_DATA_DIR", str(mnist_root))
    monkeypatch.setenv("SIMLEARN_LOG_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIMLEARN_NOTEBOOK_RUN_DIR", raising=False)
    notebook = execute("mnist_multitask.ipynb", tmp_path)
    run = run_dir(tmp_path / "outputs", "mnist_multitask")
    assert (run / "structure.json").is_file() and (run / "similarity.png").is_file()
    assert len(outputs(notebook, "image/png")) == 1  # the 10×10 heatmap
    tables = "\n".join(outputs(notebook, "text/markdown"))
    assert "same_parity_near" in tables and "| **9** |" in tables


@pytest.mark.slow
def test_animals_2d_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMLEARN_LOG_DIR", str(tmp_path / "outputs"))
    monkeypatch.delenv("SIMLEARN_NOTEBOOK_RUN_DIR", raising=False)
    notebook = execute("animals_2d.ipynb", tmp_path)
    run = run_dir(tmp_path / "outputs", "animals_2d_toy")
    assert (run / "probe.json").is_file() and (run / "circle.png").is_file()
    assert len(outputs(notebook, "image/png")) == 1  # the circle
    tables = "\n".join(outputs(notebook, "text/markdown"))
    assert all(f"| zebra | {animal} |" in tables for animal in ("dolphin", "tiger", "horse"))
