"""Notebooks run top to bottom (each asserts what it shows)."""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def execute(name: str, tmp_path) -> list[dict]:
    """Run a copy of ``notebooks/<name>`` beside a link to configs/, so that its outputs land in tmp_path,
    not in the checkout; return every code cell's outputs."""
    (tmp_path / "notebooks").mkdir()
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    path = tmp_path / "notebooks" / name
    shutil.copy(os.path.join(ROOT, "notebooks", name), path)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    ]


def text_of(outputs: list[dict]) -> str:
    return "".join(output.get("text", "") for output in outputs)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path) -> None:
    outputs = execute("quickstart.ipynb", tmp_path)
    assert "val/loss: first" in text_of(outputs)
    assert any("image/png" in output.get("data", {}) for output in outputs), "the loss plot was not drawn"


@pytest.mark.slow
def test_data_batch_notebook_renders_the_batch(tmp_path) -> None:
    outputs = execute("data_batch.ipynb", tmp_path)
    pages = [output["data"]["text/html"] for output in outputs if "text/html" in output.get("data", {})]
    assert len(pages) == 1 and 'class="lit-sft-trained"' in pages[0] and 'class="lit-sft-cut"' in pages[0]
    assert "6 rows, " in text_of(outputs) and "train: 64 rows read" in text_of(outputs)


@pytest.mark.slow
def test_compare_runs_notebook_plots_both_runs(tmp_path) -> None:
    outputs = execute("compare_runs.ipynb", tmp_path)
    text = text_of(outputs)
    assert "full: " in text and "lora: " in text and "GSM8K strict accuracy" in text
    assert any("image/png" in output.get("data", {}) for output in outputs), "the plots were not drawn"
    # Each run's export carries a model card with the run's configuration and its GSM8K accuracy.
    for run in ("full", "lora"):
        card = (tmp_path / "notebooks" / "runs" / "compare" / run / "hf" / "final" / "README.md").read_text()
        assert "| GSM8K accuracy (strict) |" in card and "The run's configuration:" in card
        assert ('| model.lora | {"r": 8' in card) == (run == "lora")
