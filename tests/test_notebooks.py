"""Notebooks run top to bottom (each asserts what it shows)."""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def parameters_cell(notebook: nbformat.NotebookNode) -> int:
    """The index of the cell tagged ``parameters`` (papermill's convention)."""
    [index] = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    return index


def execute(name: str, tmp_path, parameters: dict[str, object] | None = None) -> list[dict]:
    """Run a copy of ``notebooks/<name>`` beside a link to configs/, so that its outputs land in tmp_path,
    not in the checkout; return every code cell's outputs. ``parameters`` are set in a cell right after the
    notebook's parameters cell, as ``papermill -p NAME VALUE`` does."""
    (tmp_path / "notebooks").mkdir()
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    path = tmp_path / "notebooks" / name
    shutil.copy(os.path.join(ROOT, "notebooks", name), path)
    notebook = nbformat.read(path, as_version=4)
    if parameters:
        injected = nbformat.v4.new_code_cell(
            "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
        )
        injected.metadata["tags"] = ["injected-parameters"]
        notebook.cells.insert(parameters_cell(notebook) + 1, injected)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    return [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    ]


def text_of(outputs: list[dict]) -> str:
    return "".join(output.get("text", "") for output in outputs)


def test_the_quickstart_notebook_evaluates_every_held_out_problem_unless_told_fewer() -> None:
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
    index = parameters_cell(notebook)
    values: dict[str, object] = {}
    exec(notebook.cells[index].source, values)
    with open(os.path.join(ROOT, "configs", "quickstart.yaml"), encoding="utf-8") as handle:
        assert values["held_out_questions"] == yaml.safe_load(handle)["data"]["init_args"]["num_val"]
    assert "str(held_out_questions)" in "".join(cell.source for cell in notebook.cells[index + 1 :])


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path) -> None:
    # 20 held-out problems instead of 200: five GSM8K evaluations of 200 took most of a 600 s cell timeout.
    outputs = execute("quickstart.ipynb", tmp_path, {"held_out_questions": 20})
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
