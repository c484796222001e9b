"""Executes the teaching notebooks in quick mode; any cell error fails the test."""

import os
import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(path.name for path in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
# Per-notebook limit in quick mode; all five together take a few minutes on two CPU cores.
CELL_TIMEOUT_S = 300


def test_the_series_has_five_notebooks():
    assert [name[:2] for name in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_quick_mode(name, monkeypatch):
    notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1 and "MLN_TF_QUICK" in parameters[0].source

    monkeypatch.setenv("MLN_TF_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    # The kernel imports this checkout's mln_tf, whatever is installed.
    repository = str(NOTEBOOKS_DIR.parent)
    paths = [repository, os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path for path in paths if path))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        # Where Jupyter would run them, in the notebooks folder; 05, which imports the
        # benchmarks, from the repository root, as papermill is often run.
        resources={"metadata": {"path": repository if name.startswith("05") else
                                str(NOTEBOOKS_DIR)}},
        # TensorFlow's C++ start-up lines go to the kernel's stderr, not into the cells.
        extra_arguments=["--IPKernelApp.capture_fd_output=False"],
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    elapsed = time.perf_counter() - start
    print(f"{name}: {elapsed:.1f} s in quick mode")

    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    # Every code cell ran, in order.
    counts = [c.execution_count for c in notebook.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))


def test_committed_notebooks_hold_full_run_outputs_without_machine_paths():
    for name in NOTEBOOKS:
        notebook = nbformat.read(NOTEBOOKS_DIR / name, as_version=4)
        code_cells = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.execution_count for c in code_cells), f"{name} is not fully executed"
        assert any(
            "image/png" in output.get("data", {}) for c in code_cells for output in c.outputs
        ) or name.startswith("02"), f"{name} has no plot"
        text = nbformat.writes(notebook)
        assert not re.search(r"/(home|root|work|tmp)/", text), f"{name} shows a local path"
