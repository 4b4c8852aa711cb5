"""Notebooks run top to bottom (each asserts what it shows)."""

from __future__ import annotations

import os
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path) -> None:
    # Run a copy beside a link to configs/, so that its outputs land in tmp_path, not in the checkout.
    (tmp_path / "notebooks").mkdir()
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    path = tmp_path / "notebooks" / "quickstart.ipynb"
    shutil.copy(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), path)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
    )
    assert "val/loss: first" in outputs
    assert any(
        "image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", [])
    ), "the loss plot was not drawn"
