"""Every notebook in notebooks/ runs top to bottom against the local server, with no API key.

The kernel is this interpreter (``sys.executable``): a kernelspec written to a temporary
directory, so whatever ``python3`` kernel the machine has installed is never used.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
jupyter_client = pytest.importorskip("jupyter_client")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["quickstart", "embeddings", "resume"]


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / "python3"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "batchframe tests",
                "language": "python",
            }
        )
    )
    return kernels


def test_notebooks_are_committed_without_outputs() -> None:
    for name in NAMES:
        book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        nbformat.validate(book)
        assert book.metadata["kernelspec"]["name"] == "python3"
        for cell in book.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


# jupyter_client and zmq emit deprecation warnings of their own on some versions.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:jupyter_client")
@pytest.mark.filterwarnings("ignore::DeprecationWarning:zmq")
@pytest.mark.filterwarnings("ignore:.*datetime.datetime.utcnow.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Jupyter is migrating its paths:DeprecationWarning")
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(
    name: str, kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    for var in list(os.environ):
        if var.startswith("OPENAI_"):  # the notebooks need no key and must not find one
            monkeypatch.delenv(var)
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    manager = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = nbclient.NotebookClient(
        book,
        km=manager,
        kernel_name="python3",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors
    warnings = [
        out.text
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream" and "Warning" in out.text
    ]
    assert not warnings  # a reader sees results, not library noise
    html = [
        out.data["text/html"]
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "text/html" in out.get("data", {})
    ]
    if name == "quickstart":  # a job and its results show themselves as HTML tables
        assert any("<b>BatchJob</b>" in h and "<table" in h for h in html)
        assert any("<b>BatchResults</b>" in h for h in html)
